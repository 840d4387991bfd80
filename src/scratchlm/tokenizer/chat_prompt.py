"""The prompt every chat front sends the model: ChatML ids with the assistant turn opened, thinking on or off.

One function for the chat CLI, the server, the page and the evaluations, so what is measured is what is served."""

from __future__ import annotations

from typing import Any, Sequence

from scratchlm.data.clean import clean_messages
from scratchlm.data.thinking import THINK_OFF


def chat_prompt_ids(tokenizer: Any, messages: Sequence[dict], enable_thinking: bool = True,
                    tools: Sequence[dict] | None = None, prefill: str = "") -> list[int]:
    """ChatML ids of `messages` (with `tools` in the system turn, tokenizer/tools.py) with the assistant turn opened;
    with thinking off an empty `<think></think>` is put in the model's mouth, so it answers at once (the way Qwen3's
    template switches thinking off); `prefill` is text the reply is made to start with (a forced tool call's
    opening)."""
    # Cleaned like the training shards (NFKC: "你好？" → "你好?") so the prompt looks like training text. An
    # assistant message that only calls tools may have no content.
    msgs = [{**m, "content": m.get("content") or ""} for m in messages]
    ids, _ = tokenizer.encode_chat(clean_messages(msgs), add_generation_prompt=True, tools=tools)
    ids = list(ids)
    if not enable_thinking:
        ids += tokenizer.encode(THINK_OFF)
    if prefill:
        ids += tokenizer.encode(prefill)
    return ids
