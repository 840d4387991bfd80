"""Chat prompts for serving: ChatML ids with thinking on or off, history that fits the context, and the
check that a run is a chat model at all. Pure Python over our `Tokenizer` (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from scratchlm.data.thinking import THINK_OFF  # noqa: F401  (tests and the page's prompt read it here)
from scratchlm.tokenizer.chat_prompt import chat_prompt_ids

# Stages whose weights have learned the chat template (a DPO run starts from an SFT run). A pretrain run
# only continues text; a reward run has a score head and does not generate.
NON_CHAT_OBJECTIVES = ("pretrain", "reward")


def chat_run_problem(run_dir: str | Path, cfg: Any, tokenizer: Any) -> str | None:
    """Why `run_dir` cannot chat (no tokenizer, no chat template, no SFT stage), or None when it can."""
    run_dir = Path(run_dir)
    if tokenizer is None:
        return f"{run_dir} has no tokenizer.json, so it cannot encode a chat; copy the tokenizer of its data there"
    tok_cfg = run_dir / "tokenizer_config.json"
    if not tok_cfg.is_file() or not json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template"):
        return f"{run_dir} has no chat template (tokenizer_config.json without 'chat_template'): not a chat model"
    objective = cfg.train.objective
    if objective in NON_CHAT_OBJECTIVES:
        what = "a reward model (it scores, it does not generate)" if objective == "reward" else "a pretrained base model"
        return (f"{run_dir} is {what} (train.objective={objective!r}), not a chat model: train an SFT stage on it "
                f"first (`scratchlm train sft --init-from {run_dir} ...`), or use `scratchlm generate` for plain text")
    return None


def fit_history(
    tokenizer: Any,
    system: str | None,
    turns: Sequence[dict],
    max_prompt_tokens: int,
    enable_thinking: bool = True,
) -> tuple[list[int], int]:
    """(prompt ids, number of oldest turns dropped) for system + turns within `max_prompt_tokens`.

    Whole user/assistant exchanges are dropped oldest first; the last user turn is never dropped, so a
    single message too long for the context still raises from the engine with its own message."""
    turns = list(turns)
    head = [{"role": "system", "content": system}] if system else []
    dropped = 0
    while True:
        ids = chat_prompt_ids(tokenizer, head + turns, enable_thinking)
        if len(ids) <= max_prompt_tokens or len(turns) <= 1:
            return ids, dropped
        # Drop the oldest exchange: a user turn and the assistant reply after it.
        cut = 2 if len(turns) >= 3 and turns[1]["role"] == "assistant" else 1
        turns = turns[cut:]
        dropped += cut
