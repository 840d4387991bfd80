"""Held-out task accuracy with inference-time scaling (engine/scaling.py): one greedy answer against N samples
picked by self-consistency (majority vote) and by best-of-N (a reward-model run), on a synth prompt file.

Per task it reports greedy accuracy, the accuracy of the self-consistency pick and of the best-of-N pick, the
mean accuracy of one sample (what N = 1 at this temperature gets) and pass@N (some sample right: the ceiling any
picker can reach). Best-of-N can also be scored by a verifier function: `addition_trace_verifier` checks the
model's own column-addition trace without knowing the question's answer.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

_STEP_RE = re.compile(r"^(\d)\+(\d)(\+1)?=(\d+)$")
_TRACE_RE = re.compile(r"<think>(.*?)</think>\s*(-?\d+)\s*$", re.S)


def addition_trace_verifier(prompt: list[dict], completion: str) -> float:
    """The share of a column-addition trace's checks that hold ("<think>4+7=11 3+5+1=9</think>91", data/tasks.py's
    format): each step's sum is right, a step adds the carry (+1) exactly when the step before reached 10, and the
    answer is the last total followed by the earlier totals' unit digits. It reads the reply only, never the question
    nor its answer (a miscopied operand passes); 0.0 for a reply without a trace."""
    m = _TRACE_RE.search(completion.strip())
    if not m:
        return 0.0
    steps = [_STEP_RE.match(t) for t in m.group(1).split()]
    if not steps or not all(steps):
        return 0.0
    totals = [int(st.group(4)) for st in steps]
    checks = []
    for i, st in enumerate(steps):
        carry = 1 if st.group(3) else 0
        checks.append(int(st.group(1)) + int(st.group(2)) + carry == totals[i])
        checks.append(carry == (1 if i and totals[i - 1] >= 10 else 0))
    checks.append(m.group(2) == str(totals[-1]) + "".join(str(t % 10) for t in reversed(totals[:-1])))
    return sum(checks) / len(checks)


VERIFIERS = {"addition_trace": addition_trace_verifier}  # by the name `scratchlm eval --verifier` takes

from scratchlm.eval.tasks import UNSEEN


def load_task_prompts(prompt_file: Path, tasks: set[str] | None, per_task: int | None) -> dict[str, list[dict]]:
    """Checkable records of a synth prompt file by score key ("<task>" or "<task> (unseen phrasings)"), the first
    `per_task` of each; `tasks` names tasks or score keys (default all checkable ones)."""
    from scratchlm.data.answers import can_check

    by_key: dict[str, list[dict]] = defaultdict(list)
    for n, line in enumerate(Path(prompt_file).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        key = rec["task"] + (UNSEEN if rec.get("phrasing") == "unseen" else "")
        if not can_check(rec["task"]) or (tasks is not None and rec["task"] not in tasks and key not in tasks):
            continue
        if per_task is None or len(by_key[key]) < per_task:
            by_key[key].append(rec)
    if not by_key:
        raise ValueError(f"{prompt_file}: no checkable prompts" + (f" of {', '.join(sorted(tasks))}" if tasks else ""))
    return dict(sorted(by_key.items()))


def evaluate_scaling(model: Any, tokenizer: Any, prompt_file: Path, n: int, *, tasks: set[str] | None = None,
                     per_task: int | None = None, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                     reward: tuple[Any, Any] | None = None, verifier: Callable[[list[dict], str], float] | None = None,
                     max_new_tokens: int = 48, keep_samples: int = 3) -> dict[str, Any]:
    """{key: {"n_items", "greedy", "self_consistency", "best_of" (with `reward`), "best_of_verifier" (with
    `verifier`), "mean_sample", "pass_at_n"}} of accuracies for the prompts of `prompt_file`, plus "samples": a few
    items with their N replies and picks."""
    from scratchlm.data.answers import check_answer
    from scratchlm.data.clean import clean_messages
    from scratchlm.engine.offline import LLM
    from scratchlm.engine.sampling import SamplingParams
    from scratchlm.engine.scaling import best_of, reward_scorer, sample_n, self_consistency, verifier_scorer

    llm = LLM(model, tokenizer)
    scorer = reward_scorer(*reward) if reward is not None else None
    verify = verifier_scorer(verifier) if verifier is not None else None
    greedy = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    sampled = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    out: dict[str, Any] = {"samples": []}
    for key, recs in load_task_prompts(prompt_file, tasks, per_task).items():
        task = recs[0]["task"]
        prompts = [clean_messages(r["prompt"]) for r in recs]
        ids = [list(tokenizer.encode_chat(p, add_generation_prompt=True)[0]) for p in prompts]
        decode = lambda o: tokenizer.decode(o, skip_special_tokens=True)  # noqa: E731
        greedy_replies = [decode(o) for o in llm.generate(ids, greedy)]
        many = [[decode(o) for o in outs] for outs in sample_n(llm.llm, ids, sampled, n)]
        acc: dict[str, float] = defaultdict(float)
        for r, p, g, replies in zip(recs, prompts, greedy_replies, many):
            ok = [check_answer(task, c, r["answer"]) for c in replies]
            vote = self_consistency(replies, task)
            acc["greedy"] += check_answer(task, g, r["answer"])
            acc["self_consistency"] += ok[vote.index]
            acc["mean_sample"] += sum(ok) / n
            acc["pass_at_n"] += any(ok)
            picks = [vote]
            if scorer is not None:
                best = best_of(p, replies, scorer)
                acc["best_of"] += ok[best.index]
                picks.append(best)
            if verify is not None:
                checked = best_of(p, replies, verify)
                acc["best_of_verifier"] += ok[checked.index]
                picks.append(checked)
            if len([s for s in out["samples"] if s["task"] == key]) < keep_samples:
                out["samples"].append({"task": key, "prompt": p[-1]["content"], "answer": r["answer"], "greedy": g,
                                       "replies": replies, "picks": [x.to_dict() for x in picks]})
        out[key] = {"n_items": len(recs), **{k: v / len(recs) for k, v in acc.items()}}
    return out


def evaluate_run_scaling(run_dir: str | Path, prompt_file: str | Path, n: int, reward_run: str | Path | None = None,
                         verifier: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """`evaluate_scaling` of a run folder's model; best-of-N is scored when `reward_run` (a reward-model run) or
    `verifier` (a name in VERIFIERS) is given. `kwargs` go to evaluate_scaling (tasks, per_task, temperature, top_p,
    seed, max_new_tokens)."""
    from scratchlm.engine.scaling import load_reward_run
    from scratchlm.runs import load_run

    if n < 1:
        raise ValueError(f"inference scaling: N={n} must be >= 1")
    model, tokenizer, cfg = load_run(run_dir)
    if tokenizer is None or cfg.train.objective == "reward":
        raise ValueError(f"{run_dir}: inference scaling needs a language-model run with its tokenizer")
    if verifier is not None and verifier not in VERIFIERS:
        raise ValueError(f"--verifier {verifier!r}: choose one of {', '.join(VERIFIERS)}")
    reward = load_reward_run(reward_run, device=next(model.parameters()).device) if reward_run else None
    return {"n": n, "reward_run": str(reward_run) if reward_run else None, "verifier": verifier,
            **evaluate_scaling(model, tokenizer, Path(prompt_file), n, reward=reward,
                               verifier=VERIFIERS[verifier] if verifier else None, **kwargs)}


def format_scaling(result: dict[str, Any]) -> str:
    """A plain table of `evaluate_run_scaling`'s accuracies, one row per task."""
    n = result["n"]
    cols = [("greedy", "greedy"), ("self_consistency", f"self-consistency@{n}"), ("best_of", f"best-of-{n} reward"),
            ("best_of_verifier", f"best-of-{n} verifier"),
            ("mean_sample", "one sample"), ("pass_at_n", f"pass@{n}")]
    rows = {k: v for k, v in result.items() if isinstance(v, dict) and "greedy" in v}
    cols = [(k, name) for k, name in cols if any(k in v for v in rows.values())]
    width = max([len(k) for k in rows] + [4])
    lines = [f"{'task':<{width}}  " + "  ".join(f"{name:>20}" for _, name in cols)]
    for key, v in rows.items():
        lines.append(f"{key:<{width}}  " + "  ".join(f"{v[k]:>20.3f}" for k, _ in cols) + f"   (n={v['n_items']})")
    return "\n".join(lines)
