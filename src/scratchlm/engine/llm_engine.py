"""LLMEngine: continuous batching over a paged KV cache, for many callers at once.

Requests wait in a queue; every `step()` reads schedule → run → sample → process, twice:
  1. prefill: the scheduler admits waiting requests while the pool has blocks for their prompts (prompt blocks
     already computed for an earlier request are shared: prefix caching); the runner prefills them together in
     one right-padded forward; a request with n > 1 samples is prefilled once and forked into n samples that
     share its blocks; each sample's first token is sampled and processed;
  2. decode: one forward over every running sample together, each at its own position with its own sampling
     parameters; finished samples are retired at once, their blocks back in the pool.
When a running sample needs a new block and none is free, the most recently admitted one is preempted: its
blocks are freed and it waits again to be recomputed from its tokens so far (what it already streamed stays
streamed). Callers get a `RequestHandle` (request.py): an iterator (threads) or async iterator (asyncio) of
`TokenEvent`s, `wait()`, and `cancel()`. `start()` runs the loop in a background thread; without it,
`wait_for` / `run_until_done` run the steps inline in the caller's thread.

The parts: kv_manager.py (block tables over the block pool), scheduler.py (the decisions), runner.py (the
forward; `compile=True` runs the decode step through `torch.compile` with the weights frozen into the graph,
~1.2× faster batch-1 decode on 2 CPU cores, docs/engine.md; `kv_cache_dtype="int8"` keeps the block pool in int8
with per-slot, per-head scales, docs/quantization.md), sampling.py (batched over rows), output.py
(logprobs, detokenisation, stop strings, events).
"""

from __future__ import annotations

import itertools
import threading
from typing import Sequence

import torch

from scratchlm.engine.blocks import NoFreeBlocks
from scratchlm.engine.detok import IncrementalText
from scratchlm.engine.kv_manager import KVManager
from scratchlm.engine.output import OutputProcessor
from scratchlm.engine.request import EngineFull, PromptTooLong, Request, RequestHandle, Sample, TokenEvent
from scratchlm.engine.runner import ModelRunner
from scratchlm.engine.sampling import SamplingParams, make_generator, sample_rows
from scratchlm.engine.scheduler import Scheduler


class LLMEngine:
    """Continuous batching over a paged KV cache for a `Transformer` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, block_size: int = 16, num_blocks: int | None = None,
                 max_num_seqs: int = 16, max_waiting: int = 64, prefix_caching: bool = True,
                 max_prefill_tokens: int = 4096, compile: bool = False, kv_cache_dtype: str = "auto") -> None:
        self.tokenizer, self.config = tokenizer, model.config
        self.device = next(model.parameters()).device
        self.max_seq_len = int(self.config.max_seq_len)
        self.block_size, self.max_num_seqs, self.max_waiting = block_size, max_num_seqs, max_waiting
        if num_blocks is None:  # every running sequence at half the context on average, at least one full one
            per_seq = -(-self.max_seq_len // block_size)
            num_blocks = max(per_seq, max_num_seqs * per_seq // 2)
        if num_blocks * block_size < self.max_seq_len:
            raise ValueError(f"LLMEngine: {num_blocks} blocks of {block_size} tokens cannot hold one sequence of "
                             f"model.max_seq_len={self.max_seq_len}")
        self.kv_manager = KVManager(num_blocks, block_size, prefix_caching)
        # prompt tokens prefilled together in one forward (padding aside)
        self.scheduler = Scheduler(self.kv_manager, max_num_seqs, max_prefill_tokens)
        self.runner = ModelRunner(model, num_blocks, block_size, compile, kv_cache_dtype)
        self.output = OutputProcessor(self.max_seq_len)
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.prompt_tokens_total = 0

    # -- the parts, by their old names ---------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        """The model the runner prefills with (and decodes with, unless compiled)."""
        return self.runner.model

    @model.setter
    def model(self, model: torch.nn.Module) -> None:
        self.runner.model = model

    @property
    def pool(self):
        """The block pool (blocks.BlockPool)."""
        return self.kv_manager.pool

    @property
    def kv(self):
        """The paged KV memory (paged_cache.PagedKVCache)."""
        return self.runner.kv

    @property
    def compiled(self) -> bool:
        """True when the decode step runs compiled (compile=True)."""
        return self.runner.compiled

    @property
    def preemptions(self) -> int:
        """Samples preempted so far."""
        return self.scheduler.preemptions

    @property
    def generation_tokens_total(self) -> int:
        """Tokens sampled so far (stop ids included)."""
        return self.output.generation_tokens_total

    # -- submitting ------------------------------------------------------------------------------------
    @property
    def running_in_background(self) -> bool:
        """True while `start()`'s thread drives the engine."""
        return self._thread is not None and self._thread.is_alive()

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        stop = set(params.stop_ids)
        if self.tokenizer is not None:
            stop.add(self.tokenizer.eos_id)  # <|im_end|>: a chat model must always be able to stop
        return stop

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, n: int = 1,
               logprobs: bool = False, top_logprobs: int = 0) -> RequestHandle:
        """Queue a request for `n` samples of `prompt_ids`; raises PromptTooLong or EngineFull."""
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt_ids]
        vocab = int(self.config.vocab_size)
        if not prompt:
            raise ValueError("LLMEngine.submit: the prompt is empty; give at least one token")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"LLMEngine.submit: token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if len(prompt) >= self.max_seq_len:
            raise PromptTooLong(f"the prompt has {len(prompt)} tokens; the model's context is {self.max_seq_len} "
                                "tokens, and at least one must be left to generate")
        if not 1 <= n <= self.max_num_seqs:
            raise ValueError(f"LLMEngine.submit: n={n} must be between 1 and max_num_seqs={self.max_num_seqs}")
        if params.stop_strings and self.tokenizer is None:
            raise ValueError("SamplingParams.stop_strings need a tokenizer: LLMEngine(model, tokenizer)")
        handle = RequestHandle(self, f"req-{next(self._ids)}", prompt, n)
        samples = []
        for i in range(n):
            seed = None if params.seed is None else params.seed + i
            samples.append(Sample(handle, i, list(prompt), params, len(prompt), make_generator(seed, self.device),
                                  IncrementalText(self.tokenizer, params.stop_strings), logprobs, top_logprobs,
                                  frozenset(self._stop_ids(params))))
        with self._work:
            if len(self.scheduler.waiting) >= self.max_waiting:
                raise EngineFull(f"{len(self.scheduler.waiting)} requests are already waiting "
                                 f"(max_waiting={self.max_waiting})")
            self.scheduler.waiting.append(Request(handle, samples))
            self._work.notify_all()
        return handle

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """Generated ids (stop id / stop string cut off) for each prompt, all scheduled together. A prompt the
        engine refuses is an error naming it, and none of the batch is left queued."""
        handles = self.submit_all(prompts, params)
        self.run_until_done(handles)
        return [h.token_ids[0] for h in handles]

    def submit_all(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None, n: int = 1,
                   caller: str = "generate") -> list[RequestHandle]:
        """Submit every prompt (n samples each) or none: a prompt the engine refuses is an error naming `caller`
        and the prompt's index, and the ones already submitted are cancelled."""
        handles: list[RequestHandle] = []
        for i, p in enumerate(prompts):
            try:
                handles.append(self.submit(p, params, n=n))
            except (ValueError, EngineFull) as e:
                for h in handles:
                    h.cancel()
                if not self.running_in_background:
                    self.step()  # drops the cancelled requests now
                raise type(e)(f"{caller}: prompt {i}: {e}") from None
        return handles

    def wait_for(self, handle: RequestHandle, timeout: float = 0.5) -> None:
        """Let `handle` make progress: wait (up to `timeout` s) for the background loop's next event for it, or
        without a background loop run one step in this thread."""
        if self.running_in_background:
            handle.wait(timeout)
        else:
            self.step()

    def run_until_done(self, handles: Sequence[RequestHandle]) -> None:
        """Return once every handle has finished: steps inline, or waits for the background loop."""
        if self.running_in_background:
            for h in handles:
                while not h.finished:
                    h.wait(0.05)
            return
        while not all(h.finished for h in handles):
            self.step()

    @torch.inference_mode()
    def warmup(self) -> None:
        """Compile the decode step now (compile=True), not at the first request: one forward for each shape it
        meets. Its writes land in free blocks, which nothing reads before a prefill overwrites them."""
        if not self.compiled:
            return
        with self._lock:
            if self.prompt_tokens_total or self.scheduler.running or self.scheduler.waiting:
                raise RuntimeError("LLMEngine.warmup: call it before the first request (it writes into free blocks)")
            self.runner.warmup(self.pool.num_blocks, self.max_seq_len)

    def stats(self) -> dict[str, int]:
        """Counters for /metrics: sequences running and waiting, blocks, the pool's bytes, tokens so far."""
        with self._lock:
            return {"running": len(self.scheduler.running), "waiting": self.scheduler.num_waiting(),
                    "blocks_used": self.pool.num_used(), "blocks_free": self.pool.num_free(),
                    "blocks_total": self.pool.num_blocks, "kv_cache_bytes": self.kv.nbytes(),
                    "prompt_tokens_total": self.prompt_tokens_total,
                    "generation_tokens_total": self.generation_tokens_total,
                    "prefix_cache_hit_blocks": self.pool.hits, "preemptions": self.preemptions}

    # -- the background loop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the scheduler loop in a background thread (needed by async callers)."""
        if self.running_in_background:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="scratchlm-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the background loop; unfinished requests end with finish_reason "abort"."""
        with self._work:
            self._stop = True
            self._work.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            sched = self.scheduler
            for s in list(sched.running) + [s for r in sched.waiting for s in r.samples]:
                self._finish(s, "abort")
            sched.waiting.clear()

    def wake(self) -> None:
        """Wake an idle background loop (a request was cancelled)."""
        # Only an idle loop needs waking; a busy one holds the lock and sees the change at its next step.
        if self._lock.acquire(blocking=False):
            try:
                self._work.notify_all()
            finally:
                self._lock.release()

    def _loop(self) -> None:
        while True:
            with self._work:
                while not self._stop and not self.scheduler.running and not self.scheduler.waiting:
                    self._work.wait()
                if self._stop:
                    return
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 — one bad forward must not stop serving everyone else
                self._abort_running(f"{type(e).__name__}: {e}")

    def _abort_running(self, error: str) -> None:
        """End every running sample with an error (their forward failed); the loop carries on."""
        with self._lock:
            for s in list(self.scheduler.running):
                self._finish(s, "abort", error=error)

    # -- one step: schedule → run → sample → process, for the prefill and then the decode ---------------
    @torch.inference_mode()
    def step(self) -> None:
        """Admit and prefill what fits, one decode forward over every running sample, retire the finished."""
        with self._lock:
            for s in self.scheduler.take_cancelled():
                self._finish(s, "abort")
            plan = self.scheduler.schedule_prefill()
            for s, why in plan.aborted:
                self._finish(s, "abort", error=why)
            if plan.prefill:
                self._prefill(plan.prefill)
            if self.scheduler.running:
                plan = self.scheduler.schedule_decode()
                if plan.decode:
                    self._decode(plan.decode)

    def _prefill(self, requests: list[Request]) -> None:
        parents = [r.parent for r in requests]
        for s in parents:
            if len(s.tokens) == s.n_prompt:  # a recomputation after preemption is not a new prompt
                self.prompt_tokens_total += s.n_prompt
        try:
            logits = self.runner.prefill(parents)  # [B, V]
        except Exception as e:  # noqa: BLE001 — the prefill failed: end these requests, serve the others
            for r in requests:
                for s in r.samples:
                    self._finish(s, "abort", error=f"{type(e).__name__}: {e}")
            return
        for s in parents:
            s.table.cached = len(s.tokens)
            self.kv_manager.register_full_blocks(s.table, s.tokens)
        # Request by request: a sample that ends at its first token frees blocks the next request's fork may need.
        for i, r in enumerate(requests):
            try:
                for child in r.samples[1:]:
                    self.kv_manager.fork(r.parent.table, child.table, self.kv.copy_block)
            except NoFreeBlocks:
                for s in r.samples:
                    self._finish(s, "abort", error="not enough KV blocks for this request's samples")
                continue
            self.scheduler.running.extend(r.samples)
            self._sample_and_process(r.samples, logits[[i] * len(r.samples)])

    def _decode(self, samples: list[Sample]) -> None:
        logits = self.runner.decode(samples)  # [B, V]
        for s in samples:
            s.table.cached += 1
            self.kv_manager.register_full_blocks(s.table, s.tokens)
        self._sample_and_process(samples, logits)

    def _sample_and_process(self, samples: list[Sample], logits: torch.Tensor) -> None:
        """Sample one token per row of logits [B, V] and apply it; a sample whose sampling or processing fails
        ends alone (its params, its stop strings), the others go on."""
        for s in samples:
            if s.params.repetition_penalty != 1.0 and s.seen is None:  # built once, then one token marked per step
                s.seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool, device=logits.device)  # [1, V]
                s.seen[0, torch.tensor(s.tokens, device=logits.device)] = True
            if s.params.counts_output and s.counts is None:  # the output only: prompt tokens do not count
                s.counts = torch.zeros(1, logits.shape[-1], dtype=torch.float32, device=logits.device)  # [1, V]
                out = torch.tensor(s.tokens[s.n_prompt:], dtype=torch.long, device=logits.device)
                s.counts[0].index_add_(0, out, torch.ones(len(out), device=logits.device))
        tokens = sample_rows(logits, [s.params for s in samples], [s.seen for s in samples],
                             [s.generator for s in samples], [s.counts for s in samples])
        for i, (s, tok) in enumerate(zip(samples, tokens)):
            try:
                if isinstance(tok, Exception):
                    raise tok
                done = self.output.process(s, tok, logits[i])
            except Exception as e:  # noqa: BLE001 — the other samples of the batch go on
                self._finish(s, "abort", error=f"{type(e).__name__}: {e}")
                continue
            if done is not None:
                self._finish(s, *done)

    def _finish(self, s: Sample, reason: str, text: str = "", error: str | None = None) -> None:
        if s in self.scheduler.running:
            self.scheduler.running.remove(s)
        self.kv_manager.free(s.table)
        s.handle.emit(TokenEvent(s.index, None, text, finish_reason=reason, error=error))
