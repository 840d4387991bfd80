"""`evaluate_run`: one run's numbers (ppl, bpb, mc, gen, synth, winrate) as a json-able dict, and the helpers
behind it. `scratchlm eval` (eval/cli.py) and the report card call it.

- ppl, bpb: over a prepared validation shard folder (`data`, default the run's train.val_data);
- mc: multiple choice by log-likelihood (`mc` file or folder, default the built-in bilingual set; MMLU / C-Eval /
  CMMLU layouts are recognised), optionally few-shot;
- gen: greedy replies to `{"prompt", "reference"}` jsonl (a synth prompt file's "answer" counts as the
  reference) scored by exact match, token F1, ROUGE-L and BLEU;
- synth: held-out synthetic-task accuracy (a synth prompt file, checked by answers.check_answer);
- winrate: this run's greedy replies against `vs`'s on `prompts`, judged by the reward-model run `judge` in both
  orders (eval/winrate.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.data.jsonl import iter_jsonl
from scratchlm.eval.tasks import generate_replies

TASKS = ("ppl", "bpb", "mc", "gen", "synth", "winrate")


def parse_tasks(text: str) -> list[str]:
    """'ppl,mc' → ['ppl', 'mc']; unknown names are an error listing the known ones."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(TASKS)}")
    return tasks


def load_gen_items(path: Path) -> list[dict[str, Any]]:
    """[{"messages" | "text", "reference"}] from jsonl: "prompt" a string or a chat list, "reference" (or "answer")."""
    items = []
    for n, rec in iter_jsonl(Path(path).read_text(encoding="utf-8").splitlines(), path):
        ref = rec.get("reference", rec.get("answer")) if isinstance(rec, dict) else None
        prompt = rec.get("prompt") if isinstance(rec, dict) else None
        if not isinstance(ref, str):
            raise ValueError(f"{path}:{n}: field 'reference' (or 'answer') must be a string")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(f"{path}:{n}: field 'prompt' must be a string or a list of chat messages")
        items.append({"messages": prompt, "reference": ref, "task": rec.get("task", "")})
    return items


def with_shots(item: dict, items: list[dict], i: int, k: int) -> dict:
    """Few-shot for chat prompts: k other items (same task first) as earlier user/assistant turns."""
    if k <= 0:
        return item
    others = [it for j, it in enumerate(items) if j != i]
    others.sort(key=lambda it: it["task"] != item["task"])  # stable: same task first, file order kept
    turns = [m for it in others[:k] for m in (*it["messages"][-1:], {"role": "assistant", "content": it["reference"]})]
    return {**item, "messages": turns + item["messages"]}


def per_subject(items: list[Any], limit: int | None) -> list[Any]:
    """The first `limit` items of every subject (all when limit is None), in their order."""
    if limit is None:
        return items
    seen: dict[str, int] = {}
    out = []
    for it in items:
        seen[it.subject] = seen.get(it.subject, 0) + 1
        if seen[it.subject] <= limit:
            out.append(it)
    return out


def evaluate_run(run_dir: str | Path, tasks: list[str], data: str | Path | None = None, mc: str | Path | None = None,
                 mc_layout: str = "auto", mc_style: str = "text", fewshot: int = 0,
                 fewshot_from: str | Path | None = None,
                 gen: str | Path | None = None, synth: str | Path | None = None, limit: int | None = None,
                 max_windows: int = 200, max_new_tokens: int = 48, per_task: int = 50,
                 vs: str | Path | None = None, judge: str | Path | None = None,
                 prompts: str | Path | None = None, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    """The run's numbers for `tasks` as a json-able dict {"run", task: {...}}; samples under "samples"."""
    import torch

    from scratchlm.runs import load_run

    run_dir = Path(run_dir)
    model, tokenizer, cfg = load_run(run_dir)
    if tokenizer is None:
        raise FileNotFoundError(f"{run_dir}: no tokenizer.json; evaluation needs the run's tokenizer")
    if cfg.train.objective == "reward":
        raise ValueError(f"{run_dir}: a reward model scores replies; it is not a language model to evaluate "
                         "(use it as the judge of a win-rate)")
    result: dict[str, Any] = {"run": str(run_dir), "params": sum(p.numel() for p in model.parameters()),
                              "kv_cache_dtype": kv_cache_dtype}
    with torch.no_grad():
        if "ppl" in tasks or "bpb" in tasks:
            from scratchlm.eval.perplexity import ppl_bpb

            val = Path(data or cfg.train.val_data or "")
            if not data and not cfg.train.val_data:
                raise ValueError(f"{run_dir}: config.toml has no train.val_data; pass --data VAL_SHARDS for ppl/bpb")
            result["ppl"] = {"data": str(val), **ppl_bpb(model, tokenizer, val, cfg.train.seq_len, max_windows)}
        if "mc" in tasks:
            from scratchlm.eval.multiple_choice import builtin_items, load_mc, score_mc

            from scratchlm.eval.multiple_choice import as_letters

            items = load_mc(mc, mc_layout) if mc else builtin_items()
            pool = load_mc(fewshot_from, mc_layout) if fewshot_from else None
            if mc_style == "letters":
                items, pool = [as_letters(i) for i in items], pool and [as_letters(i) for i in pool]
            elif mc_style != "text":
                raise ValueError(f"--mc-style {mc_style!r}: choose text or letters")
            scored = score_mc(model, tokenizer, per_subject(items, limit), fewshot=fewshot, pool=pool)
            scored.pop("predictions"), scored.pop("loglikelihoods")
            result["mc"] = {"data": str(mc or "builtin"), "style": mc_style, "fewshot": fewshot, **scored}
        if "gen" in tasks:
            from scratchlm.eval.text_metrics import generation_scores

            if not gen:
                raise ValueError("--tasks gen needs --gen FILE ({\"prompt\", \"reference\"} jsonl)")
            every = load_gen_items(Path(gen))
            items = [with_shots(it, every, i, fewshot) for i, it in enumerate(every)][:limit]
            replies = generate_replies(model, tokenizer, items, max_new_tokens, kv_cache_dtype=kv_cache_dtype)
            result["gen"] = {"data": str(gen), "fewshot": fewshot, **generation_scores(replies, [it["reference"] for it in items])}
            result.setdefault("samples", []).extend(
                {"prompt": it["messages"][-1]["content"], "reply": r, "reference": it["reference"]}
                for it, r in list(zip(items, replies))[:5])
        if "synth" in tasks:
            from scratchlm.eval.tasks import evaluate_tasks

            if not synth:
                raise ValueError("--tasks synth needs --synth PROMPT_FILE (e.g. DATA/synth/prompt_test.jsonl)")
            scores, _ = evaluate_tasks(model, tokenizer, Path(synth), per_task, max_new_tokens,
                                       kv_cache_dtype=kv_cache_dtype)
            result["synth"] = {task: {"acc": c / n, "correct": c, "n": n} for task, (c, n) in scores.items()}
        if "winrate" in tasks:
            from scratchlm.eval.winrate import compare_runs, load_prompts

            if not (vs and judge and prompts):
                raise ValueError("--tasks winrate needs --vs RUN, --judge REWARD_RUN and --prompts FILE")
            result["winrate"] = compare_runs(run_dir, vs, judge, load_prompts(Path(prompts))[:limit], max_new_tokens,
                                             kv_cache_dtype)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain two-column table of the headline numbers of `evaluate_run`'s result."""
    rows: list[tuple[str, str]] = []
    if "ppl" in result:
        rows += [("val perplexity", f"{result['ppl']['ppl']:.2f}"), ("val bits per byte", f"{result['ppl']['bpb']:.4f}")]
    if "mc" in result:
        m = result["mc"]
        rows.append((f"multiple choice acc ({m['n']} items, {m['fewshot']}-shot, {m['style']})", f"{m['acc']:.3f}  (norm {m['acc_norm']:.3f})"))
        rows += [(f"  {s}", f"{v['acc']:.3f}  (n={v['n']})") for s, v in m["by_subject"].items()]
    if "gen" in result:
        g = result["gen"]
        rows += [(f"generation ({g['n']} prompts, {g['fewshot']}-shot) exact match", f"{g['exact_match']:.3f}"),
                 ("  token F1", f"{g['token_f1']:.3f}"), ("  ROUGE-L", f"{g['rougeL']:.3f}"), ("  BLEU", f"{g['bleu']:.2f}")]
    for task, v in result.get("synth", {}).items():
        rows.append((f"synth {task}", f"{v['acc']:.3f}  ({v['correct']}/{v['n']})"))
    if "winrate" in result:
        w = result["winrate"]
        rows.append((f"win-rate vs {w['b']} ({w['n']} prompts, both orders)",
                     f"{w['win_rate']:.3f}  ({w['wins']}W {w['ties']}T {w['losses']}L)"))
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
