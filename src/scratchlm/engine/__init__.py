"""The serving engine: continuous batching over a paged KV cache with prefix caching (engine.py), the block
pool (blocks.py), the paged cache the model attends through (paged_cache.py) and incremental detokenisation
with stop strings (detok.py)."""

from scratchlm.engine.engine import EngineFull, LLMEngine, PromptTooLong, RequestHandle, TokenEvent

__all__ = ["LLMEngine", "RequestHandle", "TokenEvent", "EngineFull", "PromptTooLong"]
