"""What a request is to the engine: its errors (`PromptTooLong`, `EngineFull`), the `TokenEvent`s it streams,
and the context check of the offline fronts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


class PromptTooLong(ValueError):
    """The prompt (plus at least one new token) does not fit in the model's context."""


class EngineFull(RuntimeError):
    """The waiting queue is full: try again later (HTTP 429)."""


@dataclass
class TokenEvent:
    """One step of one sample: its new token and text; `finish_reason` set on the sample's last event."""

    index: int  # which of the request's n samples
    token_id: int | None
    text: str  # new text, detokenised incrementally, stop strings cut
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    error: str | None = None  # why an "abort" that nobody asked for happened (the engine failed on this request)


def check_context(prompt_lens: Sequence[int], max_new_tokens: int, max_seq_len: int) -> None:
    """Raise if the longest prompt plus max_new_tokens does not fit in the model's context."""
    if not prompt_lens:
        raise ValueError("generate: no prompts given")
    for i, n in enumerate(prompt_lens):
        if n == 0:
            raise ValueError(f"generate: prompt {i} is empty; give at least one token (e.g. a BOS or <|im_start|>)")
    longest = max(prompt_lens)
    if longest + max_new_tokens > max_seq_len:
        row = list(prompt_lens).index(longest)
        raise ValueError(
            f"generate: prompt {row} has {longest} tokens + max_new_tokens={max_new_tokens} = "
            f"{longest + max_new_tokens} exceeds model.max_seq_len={max_seq_len}; "
            f"shorten the prompt or lower max_new_tokens to {max(0, max_seq_len - longest)}"
        )
