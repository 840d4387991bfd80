"""The scheduler: the waiting queue (of `Request`s) and the running samples, and each step's decisions.

A step has two phases, each a forward. `schedule_prefill()` admits waiting requests while sequences, prompt
tokens and blocks allow (their blocks allocated all or nothing; a request that cannot fit even alone is
aborted). `schedule_decode()` then gives every running sample — those just prefilled included, after their
first token — a slot for its next token; when a sample needs a block and none is free, the most recently
admitted sample is preempted (its blocks freed, queued first to be recomputed from its tokens). Both return a
plain `SchedulerOutput`; the engine runs it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from scratchlm.engine.blocks import NoFreeBlocks
from scratchlm.engine.kv_manager import KVManager
from scratchlm.engine.request import Request, Sample


@dataclass
class SchedulerOutput:
    """One phase's decisions: requests to prefill, samples to decode, samples preempted, samples to abort."""

    prefill: list[Request] = field(default_factory=list)
    decode: list[Sample] = field(default_factory=list)
    preempted: list[Sample] = field(default_factory=list)
    aborted: list[tuple[Sample, str]] = field(default_factory=list)  # (sample, why)


class Scheduler:
    """Waiting requests and running samples over one KV manager."""

    def __init__(self, kv: KVManager, max_num_seqs: int, max_prefill_tokens: int) -> None:
        self.kv, self.max_num_seqs, self.max_prefill_tokens = kv, max_num_seqs, max_prefill_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Sample] = []
        self.preemptions = 0

    def num_waiting(self) -> int:
        """Samples waiting (a new request counts its n)."""
        return sum(len(r.samples) for r in self.waiting)

    def take_cancelled(self) -> list[Sample]:
        """Remove the samples of cancelled requests (running ones first, then waiting ones) and return them."""
        gone = [s for s in self.running if s.handle.cancelled]
        self.running = [s for s in self.running if not s.handle.cancelled]
        kept: deque[Request] = deque()
        for r in self.waiting:
            if r.handle.cancelled:
                gone.extend(r.samples)
            else:
                kept.append(r)
        self.waiting = kept
        return gone

    def schedule_prefill(self) -> SchedulerOutput:
        """Admit waiting requests while sequences, prompt tokens and blocks allow; their blocks allocated now."""
        out = SchedulerOutput()
        n_seqs, n_tokens = len(self.running), 0
        while self.waiting:
            req = self.waiting[0]
            parent = req.parent
            if n_seqs + len(req.samples) > self.max_num_seqs:
                break
            if out.prefill and n_tokens + len(parent.tokens) > self.max_prefill_tokens:
                break
            busy = bool(self.running or out.prefill)
            # headroom: a copy of a shared partial block per extra sample, one decode block per sample
            fits, enough = self.kv.fits(parent.tokens, headroom=2 * (len(req.samples) - 1) + 1)
            if not enough and busy:
                break  # wait for running samples to finish
            self.waiting.popleft()
            if not fits:  # alone and still too big
                out.aborted += [(s, "not enough KV blocks for this request alone") for s in req.samples]
                continue
            self.kv.admit(parent.table, parent.tokens)
            out.prefill.append(req)
            n_seqs += len(req.samples)
            n_tokens += len(parent.tokens) - parent.table.cached
        return out

    def schedule_decode(self) -> SchedulerOutput:
        """A slot for every running sample's next token, preempting the latest admitted when blocks run out."""
        out = SchedulerOutput()
        for s in list(self.running):
            if s not in self.running:
                continue  # preempted while making room for an earlier one
            while True:
                try:
                    self.kv.grow(s.table, s.table.cached + 1)
                    break
                except NoFreeBlocks:
                    victim = self.running[-1]
                    self.preempt(victim)
                    out.preempted.append(victim)
                    if victim is s:
                        break
        out.decode = list(self.running)
        return out

    def preempt(self, s: Sample) -> None:
        """Free `s`'s blocks and queue it first to be recomputed from its tokens so far."""
        self.running.remove(s)
        self.kv.free(s.table)
        self.waiting.appendleft(Request(s.handle, [s]))
        self.preemptions += 1
