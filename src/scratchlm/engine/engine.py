"""LLMEngine: continuous batching over a paged KV cache, for many callers at once.

Requests wait in a queue; every `step()` the scheduler
  1. admits waiting requests while the pool has blocks for their prompts (prompt blocks already computed for
     an earlier request are shared: prefix caching) and prefills them together in one right-padded forward; a
     request with n > 1 samples is prefilled once and forked into n sequences that share its blocks;
  2. runs one decode forward over every running sequence together, each at its own position with its own
     sampling parameters, and
  3. retires finished sequences at once, returning their blocks to the pool.
When a running sequence needs a new block and none is free, the most recently admitted sequence is preempted:
its blocks are freed and it waits again to be recomputed from its tokens so far (what it already streamed
stays streamed). Callers get a `RequestHandle`: an iterator (threads) or async iterator (asyncio) of
`TokenEvent`s, and `cancel()`. `start()` runs the loop in a background thread; without it, `generate()` runs
the steps inline.

`compile=True` (serving a trained model: `scratchlm serve --compile`) runs the decode forward through
`torch.compile` with the weights frozen into the graph (`compile_frozen`); `warmup()` compiles it before the first
request. On 2 CPU cores a batch-1 decode step then runs ~1.2× faster (docs/engine.md).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

import torch

from scratchlm.engine.blocks import BlockPool, NoFreeBlocks, block_hash
from scratchlm.engine.detok import IncrementalText
from scratchlm.engine.paged_cache import PagedKVCache
from scratchlm.engine.request import EngineFull, PromptTooLong, TokenEvent
from scratchlm.engine.sampling import SamplingParams, make_generator, process_logits, sample


def compile_frozen(model: torch.nn.Module) -> Callable[..., Any]:
    """`model` under torch.compile with its weights folded into the graph as constants (inductor's freezing).

    Freezing is what makes a small-batch decode step fast on a CPU: linear weights are repacked once for
    oneDNN's GEMM, and the small ops between the matmuls fuse into a few C++ kernels (with `cpp_wrapper`, called
    from C++ rather than Python). The price: the graph keeps the weights of the moment it compiled, so the model
    must not be trained afterwards (LLMEngine checks); shapes are dynamic, so batch size and context length
    changes do not recompile.
    """
    from torch._inductor import config as inductor_config

    settings = {"freezing": True, "cpp_wrapper": next(model.parameters()).device.type == "cpu"}
    compiled = torch.compile(model, dynamic=True)

    def forward(*args, **kwargs):
        # Set around every call, not passed as torch.compile(options=...): compiling happens at a call, and
        # freezing given as an option did not take effect (measured: 88 vs 103 tok/s, minimind-26m, batch 1).
        with inductor_config.patch(settings):
            return compiled(*args, **kwargs)

    return forward


def _weights_version(model: torch.nn.Module) -> int:
    """Sum of the parameters' in-place write counters: changes when an optimizer (or a load) writes a weight."""
    return sum(p._version for p in model.parameters())


class RequestHandle:
    """A submitted request: iterate its events (thread or asyncio), read its outputs, or cancel it."""

    def __init__(self, engine: "LLMEngine", request_id: str, prompt: list[int], n: int) -> None:
        self.engine, self.request_id, self.prompt, self.n = engine, request_id, prompt, n
        self.prompt_tokens = len(prompt)
        self.token_ids: list[list[int]] = [[] for _ in range(n)]  # per sample, as generated (stop id dropped)
        self.finish_reasons: list[str | None] = [None] * n
        self._events: deque[TokenEvent] = deque()
        self._cond = threading.Condition()
        self._async: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.cancelled = False

    @property
    def finished(self) -> bool:
        """True once every sample has its finish reason."""
        return all(r is not None for r in self.finish_reasons)

    def _emit(self, ev: TokenEvent) -> None:
        with self._cond:
            if ev.finish_reason is not None:
                self.finish_reasons[ev.index] = ev.finish_reason
            self._events.append(ev)
            self._cond.notify_all()
            waiters = list(self._async)
        for loop, flag in waiters:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # that event loop has closed: its reader is gone
                pass

    def _take(self) -> tuple[list[TokenEvent], bool]:
        # A sample's finish reason is set under the lock together with its last event, so once every sample
        # has finished, the events taken here are all that will ever come.
        with self._cond:
            batch = list(self._events)
            self._events.clear()
            return batch, self.finished

    def __iter__(self) -> Iterator[TokenEvent]:
        """Events as they come, blocking; ends when every sample has finished. Without a background loop the
        iterating thread drives the engine itself."""
        while True:
            batch, done = self._take()
            yield from batch
            if done:
                return
            if self.engine.running_in_background:
                with self._cond:
                    if not self._events and not self.finished:
                        self._cond.wait(0.5)
            else:
                self.engine.step()

    async def aiter(self) -> AsyncIterator[TokenEvent]:
        """Events as they come, for asyncio code (the engine must run in the background: `start()`)."""
        loop, flag = asyncio.get_running_loop(), asyncio.Event()
        with self._cond:
            self._async.append((loop, flag))
        try:
            while True:
                flag.clear()
                batch, done = self._take()
                for ev in batch:
                    yield ev
                if done:
                    return
                if not batch:
                    await flag.wait()
        finally:
            with self._cond:
                self._async.remove((loop, flag))

    def cancel(self) -> None:
        """Stop every sample of this request and free its blocks (at the engine's next step)."""
        self.cancelled = True
        self.engine._wake()


@dataclass
class _Seq:
    """One sample being generated: its tokens, blocks and sampling state."""

    handle: RequestHandle
    index: int
    tokens: list[int]  # prompt + generated so far (the last one not yet in the cache while running)
    params: SamplingParams
    n_prompt: int
    generator: torch.Generator | None
    text: IncrementalText
    logprobs: bool = False
    top_logprobs: int = 0
    stop_ids: frozenset[int] = frozenset()
    seen: torch.Tensor | None = None  # [1, V] tokens of the prompt and output, for the repetition penalty
    blocks: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)  # prefix-cache key of each full block
    cached: int = 0  # tokens whose keys/values are in the blocks

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt


class LLMEngine:
    """Continuous batching over a paged KV cache for a `Transformer` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, block_size: int = 16, num_blocks: int | None = None,
                 max_num_seqs: int = 16, max_waiting: int = 64, prefix_caching: bool = True,
                 max_prefill_tokens: int = 4096, compile: bool = False) -> None:
        p = next(model.parameters())
        self.model, self.tokenizer, self.config = model, tokenizer, model.config
        self.device, self.dtype = p.device, p.dtype
        self.max_seq_len = int(self.config.max_seq_len)
        self.block_size, self.max_num_seqs, self.max_waiting = block_size, max_num_seqs, max_waiting
        self.max_prefill_tokens = max_prefill_tokens  # prompt tokens prefilled together in one forward (padding aside)
        if num_blocks is None:  # every running sequence at half the context on average, at least one full one
            per_seq = -(-self.max_seq_len // block_size)
            num_blocks = max(per_seq, max_num_seqs * per_seq // 2)
        if num_blocks * block_size < self.max_seq_len:
            raise ValueError(f"LLMEngine: {num_blocks} blocks of {block_size} tokens cannot hold one sequence of "
                             f"model.max_seq_len={self.max_seq_len}")
        self.pool = BlockPool(num_blocks, block_size, prefix_caching)
        self.kv = PagedKVCache(self.config, num_blocks, block_size, self.device, self.dtype)
        self.waiting: deque[_Seq | list[_Seq]] = deque()  # a request with n > 1 waits as its one prefill
        self.running: list[_Seq] = []
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.preemptions = 0
        # The decode forward: the model itself, or its compiled and frozen form (serving a model nobody trains).
        self.compiled = compile
        self._decode_model = compile_frozen(model) if compile else model
        self._frozen_version = _weights_version(model) if compile else 0

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
        seqs = []
        for i in range(n):
            seed = None if params.seed is None else params.seed + i
            seqs.append(_Seq(handle, i, list(prompt), params, len(prompt), make_generator(seed, self.device),
                             IncrementalText(self.tokenizer, params.stop_strings), logprobs, top_logprobs,
                             frozenset(self._stop_ids(params))))
        with self._work:
            if len(self.waiting) >= self.max_waiting:
                raise EngineFull(f"{len(self.waiting)} requests are already waiting (max_waiting={self.max_waiting})")
            self.waiting.append(seqs if n > 1 else seqs[0])
            self._work.notify_all()
        return handle

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """Generated ids (stop id / stop string cut off) for each prompt, all scheduled together. A prompt the
        engine refuses is an error naming it, and none of the batch is left queued."""
        handles: list[RequestHandle] = []
        for i, p in enumerate(prompts):
            try:
                handles.append(self.submit(p, params))
            except (ValueError, EngineFull) as e:
                for h in handles:
                    h.cancel()
                if not self.running_in_background:
                    self.step()  # drops the cancelled requests now
                raise type(e)(f"generate: prompt {i}: {e}") from None
        while not all(h.finished for h in handles):
            if self.running_in_background:
                with handles[0]._cond:
                    handles[0]._cond.wait(0.05)
            else:
                self.step()
        return [h.token_ids[0] for h in handles]

    @torch.inference_mode()
    def warmup(self) -> None:
        """Compile the decode step now (compile=True), not at the first request: one forward for each shape it
        meets — one sequence on consecutive blocks (no mask), one on scattered blocks, and several sequences. Its
        writes land in free blocks, which nothing reads before a prefill overwrites them."""
        if not self.compiled:
            return
        with self._lock:
            if self.prompt_tokens_total or self.running or self.waiting:
                raise RuntimeError("LLMEngine.warmup: call it before the first request (it writes into free blocks)")
            bs, nb = self.block_size, self.pool.num_blocks
            cached = min(2 * bs, self.max_seq_len - 1)  # tokens already cached: past one block when it can be
            n = -(-(cached + 1) // bs)  # blocks per sequence
            one = list(range(n))
            for tables in ([one], [one[::-1]], [one, [(b + n) % nb for b in one]]):
                view = self.kv.batch(tables, [cached] * len(tables), [1] * len(tables))
                ids = torch.zeros(len(tables), 1, dtype=torch.long, device=self.device)
                self._decode_model(ids, cache=view)

    def stats(self) -> dict[str, int]:
        """Counters for /metrics: sequences running and waiting, blocks, tokens so far."""
        with self._lock:
            waiting = sum(len(w) if isinstance(w, list) else 1 for w in self.waiting)
            return {"running": len(self.running), "waiting": waiting, "blocks_used": self.pool.num_used(),
                    "blocks_free": self.pool.num_free(), "blocks_total": self.pool.num_blocks,
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
            for s in list(self.running) + [x for w in self.waiting for x in (w if isinstance(w, list) else [w])]:
                self._finish(s, "abort")
            self.waiting.clear()

    def _wake(self) -> None:
        # Only an idle loop needs waking; a busy one holds the lock and sees the change at its next step.
        if self._lock.acquire(blocking=False):
            try:
                self._work.notify_all()
            finally:
                self._lock.release()

    def _loop(self) -> None:
        while True:
            with self._work:
                while not self._stop and not self.running and not self.waiting:
                    self._work.wait()
                if self._stop:
                    return
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 — one bad forward must not stop serving everyone else
                self._abort_running(f"{type(e).__name__}: {e}")

    def _abort_running(self, error: str) -> None:
        """End every running sequence with an error (their forward failed); the loop carries on."""
        with self._lock:
            for s in list(self.running):
                self._finish(s, "abort", error=error)

    # -- one scheduler step -------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        """Admit and prefill what fits, one decode forward over every running sequence, retire the finished."""
        with self._lock:
            self._drop_cancelled()
            self._admit()
            if self.running:
                self._decode()

    def _drop_cancelled(self) -> None:
        for s in [s for s in self.running if s.handle.cancelled]:
            self._finish(s, "abort")
        kept = deque()
        for w in self.waiting:
            group = w if isinstance(w, list) else [w]
            if group[0].handle.cancelled:
                for s in group:
                    self._finish(s, "abort")
            else:
                kept.append(w)
        self.waiting = kept

    def _blocks_needed(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def _admit(self) -> None:
        """Take waiting requests while sequences and blocks allow (their blocks allocated now), then prefill them
        together in one right-padded forward."""
        batch: list[list[_Seq]] = []
        n_tokens = 0
        while self.waiting:
            group = self.waiting[0] if isinstance(self.waiting[0], list) else [self.waiting[0]]
            parent = group[0]
            if len(self.running) + sum(map(len, batch)) + len(group) > self.max_num_seqs:
                break
            if batch and n_tokens + len(parent.tokens) > self.max_prefill_tokens:
                break
            busy = bool(self.running or batch)
            hits = self._match_prefix(parent)
            parent.blocks, parent.cached = list(hits), len(hits) * self.block_size
            try:
                self._ensure_blocks(parent, len(parent.tokens))
                # headroom: a copy of a shared partial block per extra sample, one decode block per sample
                enough = self.pool.num_free() >= 2 * (len(group) - 1) + 1
            except NoFreeBlocks:
                enough = False
            if not enough and busy:
                self._free(parent)
                parent.keys, parent.cached = [], 0
                break  # wait for running sequences to finish
            self.waiting.popleft()
            if len(parent.blocks) * self.block_size < len(parent.tokens):  # alone and still too big
                for s in group:
                    self._finish(s, "abort", error="not enough KV blocks for this request alone")
                continue
            batch.append(group)
            n_tokens += len(parent.tokens) - parent.cached
        if batch:
            self._prefill_batch(batch)

    def _prefill_batch(self, batch: list[list[_Seq]]) -> None:
        parents = [g[0] for g in batch]
        try:
            logits = self._prefill(parents)  # [B, V]
        except Exception as e:  # noqa: BLE001 — the prefill failed: end these requests, serve the others
            for group in batch:
                for s in group:
                    self._finish(s, "abort", error=f"{type(e).__name__}: {e}")
            return
        for i, group in enumerate(batch):
            try:
                for child in group[1:]:
                    self._fork(group[0], child)
            except NoFreeBlocks:
                for s in group:
                    self._finish(s, "abort", error="not enough KV blocks for this request's samples")
                continue
            self.running.extend(group)
            for s in group:
                self._accept_or_abort(s, logits[i:i + 1])

    def _match_prefix(self, seq: _Seq) -> list[int]:
        """Cached blocks that hold the prompt's leading full blocks (the last token is always recomputed, so
        a whole-prompt hit still leaves one token to prefill for the first logits)."""
        hits: list[int] = []
        key = None
        for i in range((len(seq.tokens) - 1) // self.block_size):
            key = block_hash(key, seq.tokens[i * self.block_size:(i + 1) * self.block_size])
            b = self.pool.lookup(key)
            if b is None:
                break
            hits.append(b)
            seq.keys.append(key)
        return hits

    def _prefill(self, seqs: list[_Seq]) -> torch.Tensor:
        """Compute the keys/values of each sequence's tokens past its cached prefix (its whole output too after a
        preemption) in one right-padded forward; each row's last real position's logits [B, V]."""
        news = [s.tokens[s.cached:] for s in seqs]
        for s in seqs:
            if len(s.tokens) == s.n_prompt:  # a recomputation after preemption is not a new prompt
                self.prompt_tokens_total += s.n_prompt
        T = max(len(n) for n in news)
        view = self.kv.batch([s.blocks for s in seqs], [s.cached for s in seqs], [len(n) for n in news])
        ids = torch.tensor([n + [0] * (T - len(n)) for n in news], dtype=torch.long, device=self.device)  # [B, T]
        out = self.model(ids, cache=view).logits  # [B, T, V]
        last = torch.tensor([len(n) - 1 for n in news], device=self.device)
        logits = out[torch.arange(len(seqs), device=self.device), last].float()  # [B, V]
        for s in seqs:
            s.cached = len(s.tokens)
            self._register_full_blocks(s)
        return logits

    def _fork(self, parent: _Seq, child: _Seq) -> None:
        """child shares parent's full blocks; a partial last block is copied (it will be written apart)."""
        full = parent.cached // self.block_size
        child.blocks = list(parent.blocks[:full])
        child.keys = list(parent.keys)
        for b in child.blocks:
            self.pool.share(b)
        rest = parent.cached - full * self.block_size
        if rest:
            b = self.pool.allocate()
            self.kv.copy_block(parent.blocks[full], b, rest)
            child.blocks.append(b)
        child.cached = parent.cached

    def _ensure_blocks(self, seq: _Seq, n_tokens: int) -> None:
        while len(seq.blocks) * self.block_size < n_tokens:
            seq.blocks.append(self.pool.allocate())

    def _register_full_blocks(self, seq: _Seq) -> None:
        bs = self.block_size
        for i in range(len(seq.keys), seq.cached // bs):
            key = block_hash(seq.keys[-1] if seq.keys else None, seq.tokens[i * bs:(i + 1) * bs])
            seq.keys.append(key)
            self.pool.register(seq.blocks[i], key)

    def _decode(self) -> None:
        # Every running sequence has one token not yet in the cache; it needs a slot for it.
        for s in list(self.running):
            if s not in self.running:
                continue  # preempted while making room for an earlier one
            while True:
                try:
                    self._ensure_blocks(s, s.cached + 1)
                    break
                except NoFreeBlocks:
                    victim = self.running[-1]
                    self._preempt(victim)
                    if victim is s:
                        break
        if not self.running:
            return
        seqs = list(self.running)
        view = self.kv.batch([s.blocks for s in seqs], [s.cached for s in seqs], [1] * len(seqs))
        ids = torch.tensor([[s.tokens[-1]] for s in seqs], dtype=torch.long, device=self.device)
        if self.compiled and _weights_version(self.model) != self._frozen_version:
            raise RuntimeError("LLMEngine(compile=True) froze the model's weights into its compiled decode step and "
                               "they have changed since (training?): build a new engine, or use compile=False")
        logits = self._decode_model(ids, cache=view).logits[:, -1, :].float()  # [B, V]
        for i, s in enumerate(seqs):
            s.cached += 1
            self._register_full_blocks(s)
            self._accept_or_abort(s, logits[i:i + 1])

    def _accept_or_abort(self, seq: _Seq, logits: torch.Tensor) -> None:
        """`_accept`, ending only this sequence if its sampling fails (its params, its stop strings)."""
        try:
            self._accept(seq, logits)
        except Exception as e:  # noqa: BLE001 — the other sequences of the batch go on
            self._finish(seq, "abort", error=f"{type(e).__name__}: {e}")

    def _preempt(self, seq: _Seq) -> None:
        """Free `seq`'s blocks and queue it first to be recomputed from its tokens so far."""
        self.running.remove(seq)
        self._free(seq)
        seq.cached, seq.keys = 0, []
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def _free(self, seq: _Seq) -> None:
        # In reverse, so that the free list hands the same blocks out again in ascending order: a lone sequence
        # on consecutive blocks reads its keys in place (paged_cache.PagedBatch).
        for b in reversed(seq.blocks):
            self.pool.release(b)
        seq.blocks = []

    def _finish(self, seq: _Seq, reason: str, text: str = "", error: str | None = None) -> None:
        if seq in self.running:
            self.running.remove(seq)
        self._free(seq)
        seq.handle._emit(TokenEvent(seq.index, None, text, finish_reason=reason, error=error))

    def _accept(self, seq: _Seq, logits: torch.Tensor) -> None:
        """Sample seq's next token from logits [1, V] (the first after a prefill, or a decode step)."""
        p = seq.params
        if p.repetition_penalty != 1.0 and seq.seen is None:  # built once, then one token marked per step
            seq.seen = torch.zeros_like(logits, dtype=torch.bool)  # [1, V]
            seq.seen[0, torch.tensor(seq.tokens, device=logits.device)] = True
        tok = int(sample(process_logits(logits, p, seq.seen), p, seq.generator))
        lp = top = None
        if seq.logprobs or seq.top_logprobs:
            logp = torch.log_softmax(logits[0], dim=-1)  # the model's own distribution (before sampling filters)
            lp = float(logp[tok])
            if seq.top_logprobs:
                v, ix = logp.topk(seq.top_logprobs)
                top = list(zip(ix.tolist(), v.tolist()))
        self.generation_tokens_total += 1
        if tok in seq.stop_ids:
            if p.keep_stop_id:
                seq.handle.token_ids[seq.index].append(tok)
            self._finish(seq, "stop", seq.text.flush())
            return
        seq.tokens.append(tok)
        if seq.seen is not None:
            seq.seen[0, tok] = True
        seq.handle.token_ids[seq.index].append(tok)
        delta, stopped = seq.text.push(tok)
        if stopped:
            seq.handle.token_ids[seq.index][:] = seq.text.ids_before_stop(seq.handle.token_ids[seq.index])
            self._finish(seq, "stop", delta)
            return
        if seq.n_generated >= p.max_new_tokens or len(seq.tokens) >= self.max_seq_len:
            seq.handle._emit(TokenEvent(seq.index, tok, delta, lp, top))
            self._finish(seq, "length", seq.text.flush())
            return
        seq.handle._emit(TokenEvent(seq.index, tok, delta, lp, top))
