"""Pre-allocated KV cache for every layer of a Transformer.

Each layer owns two buffers: keys and values [B, n_kv_heads, C, head_dim] for MHA/GQA/MQA, or MLA's
normalised latent c_kv [B, C, kv_lora_rank] and roped shared key k_rope [B, C, qk_rope_head_dim].
Rows of a batch advance in lockstep (slot t of every row holds the t-th token fed); left-padded prompts
are handled by a per-slot key padding mask and a per-row RoPE offset (the number of padding tokens).

With a sliding window W smaller than max_len the buffers are a ring of C = W slots: a new token at
absolute slot position p overwrites slot p % W, so the cache never holds more than W positions. During a
forward the new keys are attended together with the ring's old contents, then written into the ring.
"""

from __future__ import annotations

from typing import Optional

import torch

from scratchlm.config import ModelConfig
from scratchlm.model.masks import AttnPlan, build_mask


def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
    """Cache bytes one token costs across all layers (MLA: latent + rope key; else 2·n_kv_heads·head_dim)."""
    size = torch.empty((), dtype=dtype).element_size()
    if cfg.attention == "mla":
        per_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    else:
        per_layer = 2 * cfg.n_kv_heads * cfg.head_dim
    return per_layer * cfg.n_layers * size


class KVCache:
    """Per-layer key/value buffers, the number of positions consumed (`pos`), and the key padding mask."""

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
        n_layers: Optional[int] = None,
    ):
        if max_len < 1:
            raise ValueError(f"KVCache: max_len={max_len} must be at least 1")
        if max_len > cfg.max_seq_len:
            raise ValueError(
                f"KVCache: max_len={max_len} exceeds model.max_seq_len={cfg.max_seq_len} (RoPE table size)"
            )
        self.batch_size, self.max_len = batch_size, max_len
        self.window = cfg.sliding_window
        self.ring = 0 < self.window < max_len
        self.capacity = self.window if self.ring else max_len  # slots per layer
        self._pos = 0  # tokens consumed per row (padding included)
        dtype = dtype or torch.float32
        n_layers = cfg.n_layers if n_layers is None else n_layers
        C = self.capacity
        if cfg.attention == "mla":
            shapes = [(batch_size, C, cfg.kv_lora_rank), (batch_size, C, cfg.qk_rope_head_dim)]
            self.seq_dim = 1
        else:
            shapes = [(batch_size, cfg.n_kv_heads, C, cfg.head_dim)] * 2
            self.seq_dim = 2
        self.layers = [tuple(torch.zeros(s, device=device, dtype=dtype) for s in shapes) for _ in range(n_layers)]
        self.valid = torch.zeros(batch_size, C, dtype=torch.bool, device=device)  # key padding mask per slot
        self.slot_pos = torch.full((C,), -1, dtype=torch.long, device=device)  # position held by each slot
        self.n_pad = torch.zeros(batch_size, dtype=torch.long, device=device)  # padding consumed per row
        self.has_pad = False
        self._start = 0  # pos at the start of the current forward

    @property
    def pos(self) -> int:
        """Positions consumed so far; the next forward appends at this slot position."""
        return self._pos

    @pos.setter
    def pos(self, value: int) -> None:
        # Rolling back (speculative decoding rejects draft tokens) just forgets the tail: later writes overwrite
        # it. A ring has already overwritten the oldest positions a rolled-back window would need again.
        if not 0 <= value <= self._pos:
            raise ValueError(f"KVCache.pos can only move back (0 ≤ pos ≤ {self._pos}), got {value}")
        if self.ring and value < self._pos:
            # The next query at `value` needs keys back to value-W+1; the ring holds pos-W onwards.
            if self._pos > self.capacity and value < self._pos - 1:
                raise ValueError(
                    f"KVCache: cannot roll a sliding-window ring back from {self._pos} to {value}: positions "
                    f"before {self._pos - self.capacity} were already overwritten (window {self.window})"
                )
            self.slot_pos[self.slot_pos >= value] = -1
        self._pos = value

    @property
    def device(self) -> torch.device:
        """Device of the buffers."""
        return self.valid.device

    def num_cached(self) -> int:
        """How many positions the buffers hold now (≤ capacity)."""
        return min(self.pos, self.capacity)

    def _all_valid(self, T: int) -> torch.Tensor:
        return torch.ones(self.batch_size, T, dtype=torch.bool, device=self.device)

    def plan(self, T: int, new_valid: Optional[torch.Tensor]) -> tuple[AttnPlan, torch.Tensor | int]:
        """Attention plan for T new tokens, and their RoPE positions: per row [B, T] after left padding,
        else the int `start` (every row at positions start … start+T-1: the model slices its RoPE tables)."""
        start = self.pos
        if start + T > self.max_len:
            raise ValueError(
                f"KVCache full: {start} cached + {T} new tokens exceeds its max_len={self.max_len}; "
                "allocate a larger cache with model.new_cache(batch_size, max_len)"
            )
        self._start = start
        self._new_valid = new_valid
        pad_now = new_valid is not None and not bool(new_valid.all())
        self.has_pad = self.has_pad or pad_now
        banded = self.window and start + T > self.window
        if not (self.ring or self.has_pad or banded or (T > 1 and start > 0)):
            # The common cases, kept free of tensor ops (one-token decode runs this every step): a prefill
            # into an empty cache is plain causal; one new token sees every cached key.
            return AttnPlan(None, is_causal=start == 0 and T > 1), start
        q_pos = torch.arange(start, start + T, device=self.device)
        if self.has_pad:
            new_valid = new_valid if new_valid is not None else self._all_valid(T)
            pads = self.n_pad[:, None] + (~new_valid).long().cumsum(1)  # [B, T] padding at or before each token
            rope_pos = (q_pos[None, :] - pads).clamp(min=0)
        else:
            rope_pos = start
        # Keys this forward attends over: the whole prefix of the linear buffer, or ring + new tokens.
        if self.ring:
            k_pos = torch.cat((self.slot_pos, q_pos))
            old_valid = self.valid & (self.slot_pos >= 0)[None]
        else:
            k_pos = torch.arange(start + T, device=self.device)
            old_valid = self.valid[:, :start]
        k_valid = None
        if self.has_pad or self.ring:
            nv = new_valid if new_valid is not None else self._all_valid(T)
            k_valid = torch.cat((old_valid, nv), dim=1)
        return AttnPlan(build_mask(q_pos, k_pos, k_valid, self.window), is_causal=False), rope_pos

    def update(self, layer: int, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer's new (k, v) or (c_kv, k_rope) for this forward; return all keys/values to attend to."""
        buf_a, buf_b = self.layers[layer]
        d, start, T = self.seq_dim, self._start, a.shape[self.seq_dim]
        if not self.ring:
            buf_a.narrow(d, start, T).copy_(a)
            buf_b.narrow(d, start, T).copy_(b)
            return buf_a.narrow(d, 0, start + T), buf_b.narrow(d, 0, start + T)
        out = torch.cat((buf_a, a.to(buf_a.dtype)), dim=d), torch.cat((buf_b, b.to(buf_b.dtype)), dim=d)
        n = min(T, self.capacity)  # only the last W new tokens can ever be seen again
        slots = torch.arange(start + T - n, start + T, device=self.device) % self.capacity
        buf_a.index_copy_(d, slots, a.narrow(d, T - n, n).to(buf_a.dtype))
        buf_b.index_copy_(d, slots, b.narrow(d, T - n, n).to(buf_b.dtype))
        return out

    def advance(self, T: int) -> None:
        """Commit T new tokens (after every layer has called `update`): move pos, record padding."""
        start, new_valid = self._start, self._new_valid
        if not self.ring and new_valid is None:  # no padding: a single fill (decode runs this every step)
            self.valid[:, start : start + T] = True
            self.slot_pos[start : start + T] = torch.arange(start, start + T, device=self.device)
            self._pos = start + T
            return
        nv = new_valid if new_valid is not None else self._all_valid(T)
        if self.ring:
            n = min(T, self.capacity)
            slots = torch.arange(start + T - n, start + T, device=self.device) % self.capacity
            self.valid[:, slots] = nv[:, T - n :]
            self.slot_pos[slots] = torch.arange(start + T - n, start + T, device=self.device)
        else:
            self.valid[:, start : start + T] = nv
            self.slot_pos[start : start + T] = torch.arange(start, start + T, device=self.device)
        self.n_pad += (~nv).long().sum(1)
        self._pos = start + T

    def reset(self) -> None:
        """Forget everything (buffers are reused, not reallocated)."""
        self._pos = 0
        self.valid.zero_()
        self.slot_pos.fill_(-1)
        self.n_pad.zero_()
        self.has_pad = False
