"""Pairwise win-rate of two runs on the same prompts, judged by a reward-model run (the AlpacaEval idea).

A judge gives P(first reply is better) for (prompt, first, second). Every pair is judged in both orders and
the two verdicts averaged, so a judge that favours a position cancels out: a judge that always prefers the
first reply scores any two runs 0.5. The reward-model judge is Bradley–Terry on its scores,
σ(r(first) − r(second)): it reads each reply alone, so it has no position to favour and both orders agree;
the averaging is what makes the same code right for judges that read both replies at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from scratchlm.data.jsonl import iter_prompt_records

Judge = Callable[[Sequence[list[dict]], Sequence[str], Sequence[str]], list[float]]


def win_rate(prompts: Sequence[list[dict]], replies_a: Sequence[str], replies_b: Sequence[str], judge: Judge) -> dict[str, Any]:
    """A's win-rate over B: per prompt, p = mean(judge(A first), 1 − judge(B first)); a win when p > 0.5, a tie at
    0.5 (counted half). Also the mean p and how often the two orders agreed (position consistency)."""
    if not (len(prompts) == len(replies_a) == len(replies_b)) or not prompts:
        raise ValueError(f"win_rate: {len(prompts)} prompts, {len(replies_a)} and {len(replies_b)} replies")
    first = judge(prompts, replies_a, replies_b)
    second = judge(prompts, replies_b, replies_a)
    prefs = [(p + (1.0 - q)) / 2 for p, q in zip(first, second)]
    wins = sum(p > 0.5 for p in prefs)
    ties = sum(p == 0.5 for p in prefs)
    consistent = sum((p > 0.5) == (q < 0.5) and (p == 0.5) == (q == 0.5) for p, q in zip(first, second))
    n = len(prefs)
    return {"win_rate": (wins + 0.5 * ties) / n, "wins": wins, "losses": n - wins - ties, "ties": ties, "n": n,
            "mean_preference": sum(prefs) / n, "position_consistency": consistent / n}


def reward_judge(reward_model: Any, tokenizer: Any) -> Judge:
    """A judge from a reward model: σ(r(prompt, first) − r(prompt, second))."""
    from scratchlm.model.reward import score_texts

    def judge(prompts: Sequence[list[dict]], firsts: Sequence[str], seconds: Sequence[str]) -> list[float]:
        a = score_texts(reward_model, tokenizer, prompts, firsts)
        b = score_texts(reward_model, tokenizer, prompts, seconds)
        return [1.0 / (1.0 + math.exp(-(x - y))) for x, y in zip(a, b)]

    return judge


def load_prompts(path: str | Path) -> list[list[dict]]:
    """Chat prompts from jsonl: "prompt" a string (one user turn) or a list of messages; errors name file:line."""
    return [msgs for _, msgs, _ in iter_prompt_records(Path(path).read_text(encoding="utf-8").splitlines(), path)]


def compare_runs(run_a: str | Path, run_b: str | Path, judge_run: str | Path, prompts: list[list[dict]],
                 max_new_tokens: int = 48, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    """Greedy replies of both runs to `prompts`, judged in both orders by the reward-model run `judge_run`."""
    from scratchlm.eval.tasks import generate_replies
    from scratchlm.runs import load_run

    replies = []
    for run in (run_a, run_b):
        model, tok, cfg = load_run(run)
        if cfg.train.objective == "reward":
            raise ValueError(f"{run}: a reward model; the runs to compare must be language models")
        replies.append(generate_replies(model, tok, [{"messages": p} for p in prompts], max_new_tokens,
                                        kv_cache_dtype=kv_cache_dtype))
    judge_model, judge_tok, jcfg = load_run(judge_run)
    if jcfg.train.objective != "reward":
        raise ValueError(f"{judge_run}: the judge must be a reward-model run (train.objective='reward'), "
                         f"not {jcfg.train.objective!r}")
    result = win_rate(prompts, replies[0], replies[1], reward_judge(judge_model, judge_tok))
    result.update(a=str(run_a), b=str(run_b), judge=str(judge_run),
                  samples=[{"prompt": p[-1]["content"], "a": x, "b": y} for p, x, y in list(zip(prompts, *replies))[:5]])
    return result
