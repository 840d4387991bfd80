"""Reward functions for RL on verifiable answers, with TRL's signature: `f(prompts, completions, **columns)` →
one float per completion. `columns` holds the prompt dataset's other fields, repeated per completion (`answer`,
`task`, ...), and `completion_ids`. Several are summed with weights (rl.reward_funcs, rl.reward_weights)."""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

RewardFunc = Callable[..., list[float]]

_THINK_THEN_ANSWER = re.compile(r"^\s*<think>.+?</think>\s*\S", re.S)


def answer_reward(prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[str],
                  task: Sequence[str], **_: Any) -> list[float]:
    """1.0 when the completion's answer is right (`answers.check_answer`, after any <think> block), else 0.0."""
    from scratchlm.data.answers import check_answer

    return [float(check_answer(t, c, a)) for c, a, t in zip(completions, answer, task)]


def digits_reward(prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[str],
                  task: Sequence[str], **_: Any) -> list[float]:
    """The share of an arithmetic answer's digits that are right (`answers.digit_credit`): a denser signal than
    `answer` for a model that is seldom wholly right, where a group of all-zero answers would teach nothing."""
    from scratchlm.data.answers import digit_credit

    return [digit_credit(t, c, a) for c, a, t in zip(completions, answer, task)]


def format_reward(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 when the completion reasons in a non-empty <think>…</think> block and then answers, else 0.0."""
    return [float(bool(_THINK_THEN_ANSWER.match(c))) for c in completions]


def length_reward(prompts: Sequence[Any], completions: Sequence[str], completion_ids: Sequence[Sequence[int]],
                  max_new_tokens: int, **_: Any) -> list[float]:
    """−(completion tokens / max_new_tokens): with a small weight, a penalty on rambling."""
    return [-len(ids) / max_new_tokens for ids in completion_ids]


REWARD_FUNCS: dict[str, RewardFunc] = {"answer": answer_reward, "digits": digits_reward, "format": format_reward,
                                       "length": length_reward}


def parse_rewards(names: str, weights: str, funcs: dict[str, Any] | None = None,
                  where: str = "") -> list[tuple[str, Any, float]]:
    """[(name, function, weight)] from rl.reward_funcs / rl.reward_weights over `funcs` (default REWARD_FUNCS;
    `where` names a stage with its own set); unknown names and a count mismatch are errors naming the fields."""
    from scratchlm.config import ConfigError

    ns = [n.strip() for n in names.split(",") if n.strip()]
    try:
        ws = [float(w) for w in weights.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"rl.reward_weights={weights!r}: comma-separated numbers, one per reward function") from None
    funcs = REWARD_FUNCS if funcs is None else funcs
    unknown = [n for n in ns if n not in funcs]
    if unknown or not ns:
        raise ConfigError(f"rl.reward_funcs={names!r}: unknown {', '.join(unknown) or '(none given)'}{where}; "
                          f"choose from {', '.join(funcs)}")
    if len(ws) != len(ns):
        raise ConfigError(f"rl.reward_weights={weights!r} has {len(ws)} weights for {len(ns)} reward functions "
                          f"({', '.join(ns)})")
    return [(n, funcs[n], w) for n, w in zip(ns, ws)]
