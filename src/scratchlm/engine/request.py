"""Requests: `RequestHandle` (what a caller holds: n samples of one prompt, their outputs and events), the
engine's `Sample` (one sample being generated, with its `BlockTable`) and `Request` (what waits to be
prefilled), the `TokenEvent`s a request streams, its errors (`PromptTooLong`, `EngineFull`) and the context
check of the offline fronts."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator, Protocol, Sequence

import torch

from scratchlm.engine.detok import IncrementalText
from scratchlm.engine.sampling import SamplingParams


class PromptTooLong(ValueError):
    """The prompt (plus at least one new token) does not fit in the model's context."""


class EngineFull(RuntimeError):
    """The waiting queue is full: try again later (HTTP 429)."""


@dataclass
class TokenEvent:
    """One step of one sample: its new token and text; `finish_reason` set on the sample's last event."""

    index: int  # which of the request's n samples
    token_id: int | None
    text: str  # new text, detokenised incrementally, stop strings cut
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    error: str | None = None  # why an "abort" that nobody asked for happened (the engine failed on this request)


def check_context(prompt_lens: Sequence[int], max_new_tokens: int, max_seq_len: int) -> None:
    """Raise if the longest prompt plus max_new_tokens does not fit in the model's context."""
    if not prompt_lens:
        raise ValueError("generate: no prompts given")
    for i, n in enumerate(prompt_lens):
        if n == 0:
            raise ValueError(f"generate: prompt {i} is empty; give at least one token (e.g. a BOS or <|im_start|>)")
    longest = max(prompt_lens)
    if longest + max_new_tokens > max_seq_len:
        row = list(prompt_lens).index(longest)
        raise ValueError(
            f"generate: prompt {row} has {longest} tokens + max_new_tokens={max_new_tokens} = "
            f"{longest + max_new_tokens} exceeds model.max_seq_len={max_seq_len}; "
            f"shorten the prompt or lower max_new_tokens to {max(0, max_seq_len - longest)}"
        )


class RequestHandle:
    """A submitted request (n samples of one prompt) as its caller sees it: the request owns its outputs and its
    event queue; iterate its events (thread or asyncio), read its outputs, wait for it, or cancel it."""

    def __init__(self, engine: "EngineLike", request_id: str, prompt: list[int], n: int) -> None:
        self.engine, self.request_id, self.n = engine, request_id, n
        self.prompt = tuple(prompt)
        self.prompt_tokens = len(prompt)
        self._token_ids: list[list[int]] = [[] for _ in range(n)]  # per sample, as generated (stop id dropped)
        self._finish_reasons: list[str | None] = [None] * n
        self._events: deque[TokenEvent] = deque()
        self._cond = threading.Condition()
        self._async: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cancelled = False

    # -- what callers read ---------------------------------------------------------------------------------
    @property
    def token_ids(self) -> list[list[int]]:
        """A copy of each sample's generated ids so far (stop id dropped unless kept, stop string cut)."""
        with self._cond:
            return [list(t) for t in self._token_ids]

    def num_tokens(self, index: int = 0) -> int:
        """How many ids sample `index` has generated so far."""
        return len(self._token_ids[index])

    @property
    def finish_reasons(self) -> list[str | None]:
        """Each sample's finish reason ("stop" | "length" | "abort"), None while it runs."""
        return list(self._finish_reasons)

    @property
    def finished(self) -> bool:
        """True once every sample has its finish reason."""
        return all(r is not None for r in self._finish_reasons)

    @property
    def cancelled(self) -> bool:
        """True once `cancel()` was called."""
        return self._cancelled

    def take_events(self) -> tuple[list[TokenEvent], bool]:
        """(the events not yet taken, whether they are the last ever)."""
        # A sample's finish reason is set under the lock together with its last event, so once every sample
        # has finished, the events taken here are all that will ever come.
        with self._cond:
            batch = list(self._events)
            self._events.clear()
            return batch, self.finished

    def wait(self, timeout: float | None = None) -> bool:
        """Block until an event is waiting or the request has finished (or `timeout` s pass); True if so."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: bool(self._events) or self.finished, timeout))

    def __iter__(self) -> Iterator[TokenEvent]:
        """Events as they come, blocking; ends when every sample has finished (the engine advances it:
        `LLMEngine.wait_for`)."""
        while True:
            batch, done = self.take_events()
            yield from batch
            if done:
                return
            self.engine.wait_for(self)

    async def aiter(self) -> AsyncIterator[TokenEvent]:
        """Events as they come, for asyncio code (the engine must run in the background: `start()`)."""
        loop, flag = asyncio.get_running_loop(), asyncio.Event()
        with self._cond:
            self._async.append((loop, flag))
        try:
            while True:
                flag.clear()
                batch, done = self.take_events()
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
        self._cancelled = True
        self.engine.wake()

    # -- what the engine writes ----------------------------------------------------------------------------
    def append_token(self, index: int, token: int) -> None:
        """Sample `index` generated `token`."""
        with self._cond:
            self._token_ids[index].append(token)

    def cut_tokens(self, index: int, keep: Callable[[list[int]], list[int]]) -> None:
        """Replace sample `index`'s ids by `keep(ids)` (a stop string cut them short)."""
        with self._cond:
            self._token_ids[index][:] = keep(self._token_ids[index])

    def emit(self, ev: TokenEvent) -> None:
        """Queue an event for the caller (a finishing one also sets its sample's finish reason)."""
        with self._cond:
            if ev.finish_reason is not None:
                self._finish_reasons[ev.index] = ev.finish_reason
            self._events.append(ev)
            self._cond.notify_all()
            waiters = list(self._async)
        for loop, flag in waiters:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # that event loop has closed: its reader is gone
                pass


class EngineLike(Protocol):
    """What a handle needs of its engine."""

    def wait_for(self, handle: RequestHandle) -> None: ...

    def wake(self) -> None: ...


@dataclass
class BlockTable:
    """Where one sample's keys/values live: its blocks, the prefix-cache key of each full one, tokens cached."""

    blocks: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    cached: int = 0


@dataclass(eq=False)
class Sample:
    """One of a request's n samples as the engine runs it: its tokens, block table and sampling state."""

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
    counts: torch.Tensor | None = None  # [1, V] each token's count in the output, for frequency / presence penalties
    table: BlockTable = field(default_factory=BlockTable)

    @property
    def n_generated(self) -> int:
        """Tokens generated so far (the stop id excluded)."""
        return len(self.tokens) - self.n_prompt


@dataclass(eq=False)
class Request:
    """What waits in the scheduler's queue: samples of one handle prefilled together, all n of a new request
    (prefilled once through `samples[0]`, then forked) or one preempted sample (recomputed from its tokens)."""

    handle: RequestHandle
    samples: list[Sample]

    @property
    def parent(self) -> Sample:
        """The sample whose tokens are prefilled."""
        return self.samples[0]
