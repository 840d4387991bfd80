"""Sampling: `SamplingParams` and the logits processing every sampler shares (repetition, frequency and presence
penalties, temperature, top-k, top-p, min-p), one draw per row, and the per-request seeded generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import math

import torch


@dataclass
class SamplingParams:
    """How to pick tokens; temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int = 0  # 0 → no top-k filter
    top_p: float = 1.0  # 1 → no nucleus filter
    repetition_penalty: float = 1.0  # 1 → off; > 1 discourages tokens already in the prompt or output
    min_p: float = 0.0  # 0 → off; keeps tokens with probability >= min_p × the top token's (after temperature)
    # OpenAI's: logit -= frequency_penalty × count + presence_penalty × (count > 0), counts over the output only
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_new_tokens: int = 64
    stop_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)  # need a tokenizer (or decode function)
    seed: int | None = None  # None → the global torch RNG
    keep_stop_id: bool = False  # keep the stop id that ended a row in its output (RL trains on it)

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0 (0 disables it)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("min_p", 0 <= self.min_p <= 1, "in [0, 1]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "in [-2, 2]"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "in [-2, 2]"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"SamplingParams.{name}={getattr(self, name)!r} must be {rule}")
        if any(not s for s in self.stop_strings):
            raise ValueError("SamplingParams.stop_strings must not contain an empty string")

    @property
    def greedy(self) -> bool:
        """True when tokens are chosen by argmax."""
        return self.temperature == 0

    @property
    def counts_output(self) -> bool:
        """True when sampling needs the count of each token in the output (frequency or presence penalty)."""
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty: logits of tokens in `seen` [B, V] bool are divided by `penalty` if positive,
    multiplied if negative (so with penalty > 1 they always go down)."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_frequency_presence_penalty(logits: torch.Tensor, counts: torch.Tensor, frequency: float,
                                     presence: float) -> torch.Tensor:
    """OpenAI's penalties: logits [B, V] minus frequency × counts [B, V] (each token's count in the output so far)
    minus presence × (count > 0)."""
    if frequency == 0.0 and presence == 0.0:
        return logits
    penalty = frequency * counts + presence * (counts > 0).to(counts.dtype)
    # in the logits' own dtype, so that the batched and the row-by-row paths round alike
    return logits - penalty.to(logits.dtype)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf (ties at the k-th value are kept)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a token when the mass strictly before it already reaches p; the top token always stays.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # even when p is so small that it rounds to 0 (mass_before 0 ≥ 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Set every logit whose probability is below min_p × its row's top probability to -inf. In logit space:
    p_t >= min_p · p_max  ⇔  l_t >= l_max + log(min_p), which needs no softmax and ignores renormalisation (so it
    gives the same set before or after top-k / top-p)."""
    if min_p <= 0.0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(min_p)
    return logits.masked_fill(logits < threshold, float("-inf"))


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None,
                   counts: torch.Tensor | None = None) -> torch.Tensor:
    """Penalties on the raw [B, V] logits (repetition over `seen` [B, V] bool, frequency / presence over the
    output's `counts` [B, V]), then temperature, top-k, top-p, min-p → logits to sample from."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if counts is not None:
        logits = apply_frequency_presence_penalty(logits, counts, params.frequency_penalty, params.presence_penalty)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from processed [B, V] logits → [B] long."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A seeded RNG for reproducible sampling, or None to use torch's global RNG."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def sample_rows(logits: torch.Tensor, params: Sequence[SamplingParams], seen: Sequence[torch.Tensor | None],
                generators: Sequence[torch.Generator | None],
                counts: Sequence[torch.Tensor | None] | None = None) -> list[int | Exception]:
    """One token per row of logits [B, V], each row with its own parameters, repetition mask [1, V] (or None),
    output token counts [1, V] (or None; None for all rows when `counts` is None) and generator: the token, or the
    exception that sampling this row raised (the other rows go on).

    Gives exactly the tokens of `sample(process_logits(row, p, seen, counts), p, generator)` row after row. The
    elementwise steps (penalties, temperature, top-k, greedy argmax) run once over all rows that share a parameter
    value — the same op with the same scalar, element by element; the steps that reduce over a row in floating
    point (top-p's softmax and cumsum, the draw's softmax) and min-p (after top-p) and the draws themselves run row
    by row, in row order, so that every generator (or the global RNG) draws what and when it did one row at a time.
    """
    B = logits.shape[0]
    counts = counts if counts is not None else [None] * B
    out: list[int | Exception] = [0] * B
    try:
        x = logits.clone()
        pen = _groups(i for i in range(B) if seen[i] is not None and params[i].repetition_penalty != 1.0)
        for idx in pen(lambda i: params[i].repetition_penalty):
            ix = torch.tensor(idx, device=x.device)
            mask = torch.cat([seen[i] for i in idx])  # [G, V]
            x[ix] = apply_repetition_penalty(x[ix], mask, params[idx[0]].repetition_penalty)
        fp = _groups(i for i in range(B) if counts[i] is not None and params[i].counts_output)
        for idx in fp(lambda i: (params[i].frequency_penalty, params[i].presence_penalty)):
            ix = torch.tensor(idx, device=x.device)
            c = torch.cat([counts[i] for i in idx])  # [G, V]
            p0 = params[idx[0]]
            x[ix] = apply_frequency_presence_penalty(x[ix], c, p0.frequency_penalty, p0.presence_penalty)
        greedy = [i for i in range(B) if params[i].greedy]
        if greedy:
            for i, tok in zip(greedy, x[torch.tensor(greedy, device=x.device)].argmax(dim=-1).tolist()):
                out[i] = tok
        hot = _groups(i for i in range(B) if not params[i].greedy)
        for idx in hot(lambda i: params[i].temperature):
            ix = torch.tensor(idx, device=x.device)
            x[ix] = x[ix] / params[idx[0]].temperature
        for idx in hot(lambda i: params[i].top_k):
            ix = torch.tensor(idx, device=x.device)
            x[ix] = top_k_filter(x[ix], params[idx[0]].top_k)
    except Exception as e:  # noqa: BLE001 — bad logits for the batch: every row reports it
        return [e] * B
    for i in range(B):
        if params[i].greedy:
            continue
        try:
            row = min_p_filter(top_p_filter(x[i:i + 1], params[i].top_p), params[i].min_p)
            out[i] = int(sample(row, params[i], generators[i]))
        except Exception as e:  # noqa: BLE001 — this row's draw failed (e.g. its probabilities are not finite)
            out[i] = e
    return out


def _groups(rows: Iterable[int]) -> Callable[[Callable[[int], Any]], list[list[int]]]:
    """rows → a function that splits them by a key into lists of row indices (first-seen order)."""
    rows = list(rows)

    def by(key: Callable[[int], Any]) -> list[list[int]]:
        groups: dict[Any, list[int]] = {}
        for i in rows:
            groups.setdefault(key(i), []).append(i)
        return list(groups.values())

    return by
