"""The two thinking modes of a reply: with a `<think>…</think>` block (or none) and "thinking off".

Thinking off is Qwen3's switch: the prompt ends with an empty block, `<think></think>`, put in the model's mouth,
and the model answers at once. A model learns that form only from replies written in it, so the synthetic SFT
data (data/synth.py) writes some replies as `THINK_OFF + answer`; the chat CLI, the server and the page put
`THINK_OFF` after the assistant header when thinking is off (serve/prompt.py).
"""

from __future__ import annotations

import re

THINK_OFF = "<think></think>"  # an empty reasoning block opened and closed for the model
_THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.S)


def strip_thinking(reply: str) -> str:
    """The reply without its leading `<think>…</think>` block (unchanged when it has none)."""
    return _THINK_BLOCK.sub("", reply, count=1)


def think_off(reply: str) -> str:
    """The reply as written with thinking off: the empty block, then the answer without its reasoning."""
    return THINK_OFF + strip_thinking(reply)
