"""The engine: continuous batching over a paged KV cache with prefix caching (`LLMEngine`), its offline front
(`LLM`), sampling (`SamplingParams`) and speculative decoding (engine/speculative.py); docs/engine.md has the
map of its modules. The public names load on first use, so that `scratchlm.engine.cli` (imported by every
`scratchlm` call) does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "LLMEngine": "scratchlm.engine.llm_engine",
    "RequestHandle": "scratchlm.engine.request",
    "TokenEvent": "scratchlm.engine.request",
    "EngineFull": "scratchlm.engine.request",
    "PromptTooLong": "scratchlm.engine.request",
    "SamplingParams": "scratchlm.engine.sampling",
    "LLM": "scratchlm.engine.offline",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'scratchlm.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
