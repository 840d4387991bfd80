"""`LLM`: the offline front of the engine (like vLLM's `LLM`): `generate` a batch of prompts, `stream` one,
`generate_text` from a string. Evaluation, the demo, RAG and `scratchlm generate` use it; it drives an
`LLMEngine` through the engine's public methods only."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch

from scratchlm.engine.llm_engine import LLMEngine
from scratchlm.engine.request import check_context
from scratchlm.engine.sampling import SamplingParams


class LLM:
    """The generation API of one model (`generate`, `stream`, `generate_text`): a front of the serving engine
    (scratchlm.engine.LLMEngine), which schedules every call's prompts together over its paged KV cache, so
    offline evaluation, the CLI and the server share one generation path. The tokenizer (optional) adds
    `<|im_end|>` as a stop id and lets stop strings be checked."""

    def __init__(self, model: torch.nn.Module, tokenizer=None, max_batch: int = 64, kv_cache_dtype: str = "auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_batch = max_batch
        self.kv_cache_dtype = kv_cache_dtype  # the engine's block pool: "auto" (the model's dtype) or "int8"
        self._llm: LLMEngine | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", kv_cache_dtype: str = "auto") -> "LLM":
        """The front of a run folder's model (in eval mode) and tokenizer (None without tokenizer.json)."""
        from scratchlm.device import pick_device
        from scratchlm.runs import load_run

        model, tokenizer, _ = load_run(run_dir, device=pick_device(device))
        return cls(model, tokenizer, kv_cache_dtype=kv_cache_dtype)

    @property
    def llm(self) -> LLMEngine:
        """The LLMEngine behind this front (built on first use; its KV pool is kept between calls)."""
        if self._llm is None:
            # Offline callers queue whole evaluation sets: no waiting limit, max_batch sequences decoding at once.
            self._llm = LLMEngine(self.model, self.tokenizer, max_num_seqs=self.max_batch, max_waiting=1 << 30,
                                  kv_cache_dtype=self.kv_cache_dtype)
        return self._llm

    def _check(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        # Offline callers want the whole answer: a prompt that leaves no room for max_new_tokens is an error here,
        # where the server would end it early with finish_reason "length". The engine checks everything else.
        check_context([len(p) for p in prompts], params.max_new_tokens, self.config.max_seq_len)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """Generated ids (prompt excluded, stop id / stop string cut off) for each prompt."""
        params = params or SamplingParams()
        self._check(prompts, params)
        return self.llm.generate(prompts, params)

    def stream(self, prompt_ids: list[int], params: SamplingParams | None = None) -> Iterator[int]:
        """Yield generated token ids one by one as they are decided (same tokens as `generate`)."""
        params = params or SamplingParams()
        self._check([prompt_ids], params)
        handle = self.llm.submit(prompt_ids, params)
        given = 0
        try:
            for _ in handle:
                # With a stop string, ids are final only once the sample has ended (the tail is cut then).
                ids = handle.token_ids[0]
                ready = len(ids) if (handle.finished or not params.stop_strings) else given
                yield from ids[given:ready]
                given = ready
            yield from handle.token_ids[0][given:]
        finally:
            if not handle.finished:
                handle.cancel()
                self.llm.step()  # frees its blocks now: nobody else may drive this engine

    def generate_text(self, prompt: str, params: SamplingParams | None = None, chat: bool = False) -> str:
        """Encode a prompt (optionally as a ChatML user turn), generate, decode the answer."""
        if self.tokenizer is None:
            raise ValueError("LLM.generate_text needs a tokenizer")
        ids = self.encode_prompt(prompt, chat)
        return self.tokenizer.decode(self.generate([ids], params)[0], skip_special_tokens=True)

    def encode_prompt(self, prompt: str, chat: bool = False) -> list[int]:
        """Prompt text → ids; chat=True wraps it as a user turn and opens the assistant turn.

        The text is cleaned as `prepare` cleans training data (NFKC: "你是谁？" → "你是谁?"), so a prompt
        looks like what the model was trained on.
        """
        from scratchlm.data.clean import clean_text

        prompt = clean_text(prompt)
        if chat:
            ids, _ = self.tokenizer.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
            return list(ids)
        return self.tokenizer.encode(prompt)
