"""`scratchlm chat`'s sampling defaults, in a module without torch: the CLI shows them in `--help` before any model
loads, and the demo samples its open-ended chats with them."""

from __future__ import annotations

# `scratchlm chat`'s defaults, chosen for a small model (docs/generation.md): sampling a little cooler than 1 with
# a nucleus and a min-p floor cuts the long tail a small model gets wrong, and a frequency penalty over the reply
# (not the prompt, so copying numbers or names from the question is not punished) breaks runs of one token.
CHAT_SAMPLING_DEFAULTS: dict[str, float] = {"temperature": 0.7, "top_p": 0.9, "min_p": 0.05,
                                            "frequency_penalty": 0.3, "presence_penalty": 0.0,
                                            "repetition_penalty": 1.0}
