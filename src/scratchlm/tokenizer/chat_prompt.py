"""The prompt every chat front sends the model: ChatML ids with the assistant turn opened, thinking on or off.

One function for the chat CLI, the server, the page and the evaluations, so what is measured is what is served."""

from __future__ import annotations

from typing import Any, Sequence

from scratchlm.data.clean import clean_messages
from scratchlm.data.thinking import THINK_OFF


def chat_prompt_ids(tokenizer: Any, messages: Sequence[dict], enable_thinking: bool = True) -> list[int]:
    """ChatML ids of `messages` with the assistant turn opened; with thinking off an empty `<think></think>`
    is put in the model's mouth, so it answers at once (the way Qwen3's template switches thinking off)."""
    # Cleaned like the training shards (NFKC: "你好？" → "你好?") so the prompt looks like training text.
    ids, _ = tokenizer.encode_chat(clean_messages(list(messages)), add_generation_prompt=True)
    ids = list(ids)
    if not enable_thinking:
        ids += tokenizer.encode(THINK_OFF)
    return ids
