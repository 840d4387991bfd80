"""Paged KV memory: one pool of fixed-size blocks per layer, and the per-forward view the model attends through.

The pool holds every sequence's keys and values in [num_blocks · block_size, ...] slot-major tensors per
layer: (k, v) as [slots, n_kv_heads, head_dim] for MHA/GQA/MQA, or MLA's latent c_kv [slots, kv_lora_rank] and
roped shared key k_rope [slots, qk_rope_head_dim]. A sequence owns no memory of its own, only a block table.

`PagedBatch` is what one forward passes to the model as its `cache`: it has the interface of
model/cache.KVCache (`plan`, `update`, `advance`, `pos`, `batch_size`), so the hand-written attention runs
unchanged. Each row is a sequence with its own number of cached tokens; its new tokens are written into their
slots, then the row's whole prefix is gathered from the pool (vLLM's PagedAttention reads blocks in place;
on a CPU, gathering a contiguous copy per layer is the simple correct form). Rows of unequal length are
right-padded; padded queries write into a scratch slot past the pool and their outputs are ignored.
"""

from __future__ import annotations

from typing import Sequence

import torch

from scratchlm.config import ModelConfig
from scratchlm.model.masks import AttnPlan, build_mask


KV_DTYPES = ("auto", "int8")


class PagedKVCache:
    """The block pool's tensors: `num_blocks` blocks of `block_size` slots per layer, plus one scratch slot.

    kv_dtype "auto" stores keys and values in the model's dtype; "int8" stores them as int8 q with a bf16 midpoint
    and scale per slot and head (MLA: per slot over the latent): x ≈ mid + scale · q, mid ≈ (max + min) / 2 and
    scale ≈ (max − min) / 254 over the head's dims, so the 255 levels span the vector's own range even when it is
    off-centre. Quantized as they are written, dequantized as a forward reads them: the same pool, a quarter of the
    fp32 bytes plus 4 bytes per slot and head."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, device: torch.device,
                 dtype: torch.dtype, kv_dtype: str = "auto") -> None:
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_cache_dtype {kv_dtype!r}: choose one of {', '.join(KV_DTYPES)}")
        self.cfg, self.num_blocks, self.block_size = cfg, num_blocks, block_size
        self.scratch = num_blocks * block_size  # padded queries write here; nothing ever reads it
        n = self.scratch + 1
        if cfg.attention == "mla":
            shapes = [(n, cfg.kv_lora_rank), (n, cfg.qk_rope_head_dim)]
        else:
            shapes = [(n, cfg.n_kv_heads, cfg.head_dim)] * 2
        self.int8 = kv_dtype == "int8"
        self.dtype = dtype  # what a forward reads back
        store = torch.int8 if self.int8 else dtype
        self.layers = [tuple(torch.zeros(s, device=device, dtype=store) for s in shapes) for _ in range(cfg.n_layers)]
        # int8: (scale, mid) of every slot's keys and values [slots, n_kv_heads, 2] (MLA: [slots, 2]) in bf16,
        # parallel to `layers`
        self.scales = [tuple(torch.zeros((*s[:-1], 2), device=device, dtype=torch.bfloat16) for s in shapes)
                       if self.int8 else () for _ in range(cfg.n_layers)]
        self.mla = cfg.attention == "mla"
        self.window = cfg.sliding_window

    def nbytes(self) -> int:
        """Bytes held by the pool (all layers, int8 scales included)."""
        return sum(t.numel() * t.element_size() for group in (self.layers, self.scales) for layer in group
                   for t in layer)

    def copy_block(self, src: int, dst: int, n_tokens: int) -> None:
        """Copy the first n_tokens slots of block src into block dst (copy-on-write of a shared partial block)."""
        bs = self.block_size
        for layer in (*self.layers, *self.scales):
            for t in layer:
                t[dst * bs: dst * bs + n_tokens] = t[src * bs: src * bs + n_tokens]

    def write(self, layer: int, which: int, slots: torch.Tensor, x: torch.Tensor) -> None:
        """Store rows x [N, ...] (one per slot) into pool tensor `which` (0: keys / c_kv, 1: values / k_rope)."""
        buf = self.layers[layer][which]
        if not self.int8:
            buf.index_copy_(0, slots, x.to(buf.dtype))
            return
        x = x.detach().float()
        hi, lo = x.amax(dim=-1), x.amin(dim=-1)
        # Asymmetric: keys after RoPE and values are often off-centre (a head's vector mostly positive or mostly
        # negative); spanning [min, max] instead of [-max|x|, max|x|] gives up to twice the resolution. On the
        # demo's dev prompts: greedy agreement 97.1% vs 96.2% for the symmetric scale (docs/quantization.md).
        # Both kept in bf16 (4 bytes a slot and head, as one fp32 scale would take). The integers are rounded against
        # the stored values, so their rounding only widens the grid a little: mid16 first, then a scale rounded up
        # that reaches both ends from it (× (1 + 2^-7) before rounding to nearest: never below what is needed).
        mid = ((hi + lo) / 2).to(torch.bfloat16)
        m = mid.float()
        half = torch.maximum(hi - m, m - lo).clamp(min=torch.finfo(torch.bfloat16).tiny)
        scale = (half / 127 * (1 + 2 ** -7)).to(torch.bfloat16)
        q = torch.round((x - m[..., None]) / scale.float()[..., None]).clamp(-127, 127)
        buf.index_copy_(0, slots, q.to(torch.int8))
        self.scales[layer][which].index_copy_(0, slots, torch.stack((scale, mid), dim=-1))

    def read(self, layer: int, which: int, span: int | None, length: int, slots: torch.Tensor | None) -> torch.Tensor:
        """Rows of pool tensor `which`: `length` consecutive slots from `span`, or the gathered `slots`."""
        buf = self.layers[layer][which]
        if span is not None:
            out = buf.narrow(0, span, length)
            scale = self.scales[layer][which].narrow(0, span, length) if self.int8 else None
        else:
            out = buf.index_select(0, slots)  # ~3x faster than buf[idx] on a CPU
            scale = self.scales[layer][which].index_select(0, slots) if self.int8 else None
        if scale is None:
            return out
        scale = scale.float()
        return torch.addcmul(scale[..., 1:], out.float(), scale[..., :1]).to(self.dtype)

    def batch(self, tables: Sequence[Sequence[int]], cached: Sequence[int], new: Sequence[int]) -> "PagedBatch":
        """The cache view of one forward: row i has `cached[i]` tokens in the blocks `tables[i]` and feeds
        `new[i]` tokens now (the input is right-padded to max(new))."""
        return PagedBatch(self, tables, cached, new)


class PagedBatch:
    """KVCache's interface over the pool for one forward of rows with their own lengths."""

    def __init__(self, pool: PagedKVCache, tables: Sequence[Sequence[int]], cached: Sequence[int],
                 new: Sequence[int]) -> None:
        device = pool.layers[0][0].device
        bs, B, T = pool.block_size, len(tables), max(new)
        self.pool, self.batch_size = pool, B
        totals = [c + n for c, n in zip(cached, new)]
        S = max(totals)  # keys per row after this forward (right-padded)
        self.pos = S - T  # the model checks pos + T ≤ max_seq_len
        self._S = S
        first = tables[0][0] if tables[0] else 0
        # One row whose blocks are consecutive in the pool (the usual case for a lone request: the free list
        # hands out ascending ids) reads its keys in place, as a contiguous cache would, instead of gathering.
        self.span = (first * bs if B == 1 and list(tables[0][: -(-S // bs)]) == list(range(first, first + -(-S // bs)))
                     else None)
        if self.span is not None and T == 1 and not pool.window:
            # One new token of one row sees every cached key: no mask at all (the decode fast path).
            self.write_slots = torch.tensor([[self.span + S - 1]], device=device)
            self.read_slots = None
            self._mask, self._rope_pos = None, torch.tensor([[S - 1]], device=device)
            # int8 pool: the new token's own key and value are used exact (row S-1 of the prefix read back)
            self._fresh = (torch.tensor([S - 1], device=device), torch.tensor([0], device=device))
            return
        cached_t = torch.tensor(list(cached), device=device)  # [B]
        total_t = torch.tensor(totals, device=device)  # [B]
        width = max(len(t) for t in tables)
        table = torch.tensor([list(t) + [0] * (width - len(t)) for t in tables], dtype=torch.long, device=device)
        k_pos = torch.arange(S, device=device)
        # Slot of every key position of every row [B, S]; positions past a row's length read slot 0 (masked).
        k_valid = k_pos[None, :] < total_t[:, None]  # [B, S]
        blk = table.gather(1, (k_pos // bs).clamp(max=table.shape[1] - 1)[None].expand(B, -1))
        read_slots = torch.where(k_valid, blk * bs + k_pos % bs, torch.zeros_like(blk))
        self.read_slots = None if self.span is not None else read_slots
        q_pos = cached_t[:, None] + torch.arange(T, device=device)[None, :]  # [B, T] absolute positions
        q_valid = q_pos < total_t[:, None]
        self.write_slots = torch.where(q_valid, read_slots.gather(1, q_pos.clamp(max=S - 1)),
                                       torch.full_like(q_pos, pool.scratch))  # [B, T]
        # Causal per row over its valid keys (and the window); a padded query sees itself: no NaN softmax row.
        self._mask = build_mask(q_pos, k_pos, k_valid, pool.window)  # [B, 1, T, S]
        # [B, T]: every row continues at its own position (a padded query's may run past the RoPE table: clamped)
        self._rope_pos = q_pos.clamp(max=pool.cfg.max_seq_len - 1)
        # int8 pool: where this forward's own (valid) new rows land in the prefix read back [B·S], and their rows in
        # the input [B·T]: they are attended with their exact keys and values
        rows = torch.arange(B, device=device)[:, None]
        self._fresh = ((rows * S + q_pos)[q_valid], (rows * T + torch.arange(T, device=device)[None, :])[q_valid])

    def plan(self, T: int, new_valid: torch.Tensor | None) -> tuple[AttnPlan, torch.Tensor]:
        """Attention plan (per-row masks) and per-row RoPE positions [B, T]."""
        if new_valid is not None:
            raise ValueError("PagedBatch: rows are right-padded by the engine; pass no attention_mask")
        return AttnPlan(self._mask, is_causal=False), self._rope_pos  # mask None: every query sees every key

    def update(self, layer: int, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's keys/values into their slots; return each row's whole prefix gathered."""
        pool = self.pool
        slots = self.write_slots.reshape(-1)  # [B·T]
        B, S = self.batch_size, self._S
        if pool.mla:  # a [B, T, r], b [B, T, rope]
            xa, xb = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        else:  # a, b: [B, Hkv, T, hd]
            H, hd = a.shape[1], a.shape[3]
            xa, xb = a.transpose(1, 2).reshape(-1, H, hd), b.transpose(1, 2).reshape(-1, H, hd)
        pool.write(layer, 0, slots, xa)
        pool.write(layer, 1, slots, xb)
        ka, kb = self._read(layer, 0, xa), self._read(layer, 1, xb)
        if pool.mla:
            return ka.view(B, S, -1), kb.view(B, S, -1)  # [B, S, r], [B, S, rope]
        return ka.view(B, S, H, hd).transpose(1, 2), kb.view(B, S, H, hd).transpose(1, 2)  # [B, Hkv, S, hd]

    def _read(self, layer: int, which: int, new: torch.Tensor) -> torch.Tensor:
        """Every row's keys or values [B·S, ...]: a view of consecutive blocks, or a gathered copy. From an int8
        pool, the rows of this forward's own tokens are `new` (exact) rather than read back: what was cached before
        is rounded, what a forward computes it attends to as computed (vLLM's prefill does the same). On the demo's
        dev prompts: greedy agreement 97.6% vs 97.1% without, the first token always fp32's."""
        slots = None if self.span is not None else self.read_slots.reshape(-1)
        out = self.pool.read(layer, which, self.span, self._S, slots)
        if self.pool.int8:
            dst, src = self._fresh
            out = out.index_copy(0, dst, new.index_select(0, src).to(out.dtype))
        return out

    def advance(self, T: int) -> None:
        """Nothing to move: the engine keeps each sequence's length."""
