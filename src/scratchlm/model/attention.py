"""Attention: `Attention` (MHA / GQA / MQA by n_kv_heads) and `MLA` (DeepSeek-V2 multi-head latent attention).

Both take the same inputs: x [B, T, D], the RoPE (cos, sin) for the new tokens, an `AttnPlan` that says
which keys each query may see (built once per forward by the Transformer and shared by every layer), and
an optional KVCache. Two kernels compute the same thing: "sdpa" (torch's fused scaled_dot_product_attention,
flash on GPU) and "reference" (softmax(QKᵀ·scale + mask)·V written out), which the tests compare against.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.config import ModelConfig
from scratchlm.device import one_cpu_thread
from scratchlm.model.layers import FUSE_MIN_ROWS, RMSNorm, apply_rope, fused_linear, linear_weight, yarn_mscale
from scratchlm.model.masks import AttnPlan

if TYPE_CHECKING:
    from scratchlm.model.cache import KVCache


# Decode-sized attention (score matrix of at most this many entries, [B, H, T, S]) runs on one CPU thread. Fused
# SDPA, 8 heads of 64, mask given, 2-core EPYC, passive OpenMP: B=1 over 96 / 512 keys 1.7× / 1.5× faster on one
# thread, B=8 over 96 keys 1.5×, B=2 over 512 and B=16 over 96 even, B=8 over 512 (32768) 0.7×.
SERIAL_ATTENTION_SCORES = 8192


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: AttnPlan,
    scale: float,
    impl: str,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(q kᵀ·scale + mask) v for q [B, H, T, dq], k [B, Hkv, S, dq], v [B, Hkv, S, dv] → [B, H, T, dv]."""
    n_rep = q.shape[1] // k.shape[1]
    if impl == "sdpa":
        B, H, T, _ = q.shape
        small = q.device.type == "cpu" and B * H * T * k.shape[2] <= SERIAL_ATTENTION_SCORES
        with one_cpu_thread(small):
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=plan.mask,
                dropout_p=dropout_p,
                is_causal=plan.mask is None and plan.is_causal,
                scale=scale,
                enable_gqa=n_rep > 1,
            )
    # Reference path: every step written out.
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)  # [B, H, S, dq]: kv head j serves query heads j·n_rep ...
        v = v.repeat_interleave(n_rep, dim=1)
    scores = (q @ k.transpose(-2, -1)).float() * scale  # [B, H, T, S]
    mask = plan.mask
    if mask is None and plan.is_causal:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(q.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads: n_kv_heads = n_heads (MHA), 1 (MQA), or between (GQA)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.impl = cfg.attn_impl
        self.dropout = cfg.dropout
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.wq = nn.Linear(cfg.d_model, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        plan: AttnPlan,
        cache: Optional["KVCache"] = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if B * T >= FUSE_MIN_ROWS:
            # One matmul for q, k, v (and one for their input gradient): the weight concat is a small copy
            # next to a large matmul. Parameters stay separate so names match Llama's q/k/v_proj.
            q, k, v = fused_linear(x, [self.wq, self.wk, self.wv])  # [B, T, nq], [B, T, nkv], [B, T, nkv]
        else:  # decoding: a concat per step would cost as much as the matmuls themselves
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        if cos.dtype != q.dtype:  # bf16 autocast: rotate in the activations' dtype
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # [B, Hkv, S, hd]: cached keys followed by/including new
        y = attend(q, k, v, plan, self.scale, self.impl, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.resid_dropout(self.wo(y))


# DeepSeek's latent norms (q_norm, kv_norm) use RMSNorm's default eps whatever the model's norm_eps is.
LATENT_NORM_EPS = 1e-6


class MLA(nn.Module):
    """DeepSeek-V2 multi-head latent attention with decoupled RoPE.

    Queries: wq (d → H·(nope+rope)) or low-rank wq_a → q_norm → wq_b. Keys/values: wkv_a projects to a latent
    c_kv [kv_lora_rank] (normalised by kv_norm) plus one roped key k_rope [qk_rope_head_dim] shared by all
    heads; wkv_b expands c_kv to per-head [k_nope | v]. The cache stores only c_kv and k_rope. Without a
    cached prefix (training, first prefill) the latents are expanded with wkv_b; when new tokens attend to a
    cached prefix (decoding), the weight-absorbed form attends in latent space instead (see `_absorbed`).
    Weight layouts match transformers' DeepseekV3Attention with rope_interleave=False.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = cfg.n_heads
        self.nope, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.impl = cfg.attn_impl
        self.dropout = cfg.dropout
        qk_dim = self.nope + self.rope_dim
        if cfg.q_lora_rank > 0:
            self.wq_a = nn.Linear(cfg.d_model, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS)
            self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * qk_dim, bias=False)
        else:
            self.wq = nn.Linear(cfg.d_model, self.n_heads * qk_dim, bias=False)
        self.wkv_a = nn.Linear(cfg.d_model, self.kv_lora_rank + self.rope_dim, bias=False)
        self.kv_norm = RMSNorm(self.kv_lora_rank, LATENT_NORM_EPS)
        self.wkv_b = nn.Linear(self.kv_lora_rank, self.n_heads * (self.nope + self.v_dim), bias=False)
        self.wo = nn.Linear(self.n_heads * self.v_dim, cfg.d_model, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        # DeepSeek folds YaRN's temperature into the softmax scale (mscale², with mscale_all_dim = 1)
        # instead of scaling cos/sin, because only the rope part of q·k sees cos/sin here.
        self.scale = qk_dim**-0.5
        if cfg.rope_scaling == "yarn":
            self.scale *= yarn_mscale(cfg.rope_factor) ** 2

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        plan: AttnPlan,
        cache: Optional["KVCache"] = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)
        q = q.view(B, T, self.n_heads, self.nope + self.rope_dim).transpose(1, 2)  # [B, H, T, nope+rope]
        q_nope, q_rope = q.split([self.nope, self.rope_dim], dim=-1)
        c_kv, k_rope = self.wkv_a(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        c_kv = self.kv_norm(c_kv)  # [B, T, r]
        cos, sin = (t.to(q.dtype) for t in rope)
        q_rope = apply_rope(q_rope, cos, sin)
        k_rope = apply_rope(k_rope.unsqueeze(1), cos, sin).squeeze(1)  # [B, T, rope]: one key for all heads
        if cache is not None:
            c_kv, k_rope = cache.update(self.layer_idx, c_kv, k_rope)  # [B, S, r], [B, S, rope]
        S = c_kv.shape[1]
        dropout = self.dropout if self.training else 0.0
        if S > T:  # appending to a cached prefix: attend in latent space, never re-expanding S latents
            y = self._absorbed(q_nope, q_rope, c_kv, k_rope, plan, dropout)
        else:
            kv = self.wkv_b(c_kv).view(B, S, self.n_heads, self.nope + self.v_dim).transpose(1, 2)
            k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)  # [B, H, S, nope], [B, H, S, v]
            k = torch.cat((k_nope, k_rope.unsqueeze(1).expand(B, self.n_heads, S, self.rope_dim)), dim=-1)
            q = torch.cat((q_nope, q_rope), dim=-1)
            y = attend(q, k, v, plan, self.scale, self.impl, dropout)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.v_dim)
        return self.resid_dropout(self.wo(y))

    def _absorbed(
        self,
        q_nope: torch.Tensor,
        q_rope: torch.Tensor,
        c_kv: torch.Tensor,
        k_rope: torch.Tensor,
        plan: AttnPlan,
        dropout: float,
    ) -> torch.Tensor:
        """Weight-absorbed MLA (DeepSeek-V2 §2.1.2): same result as expanding the latents with wkv_b.

        q_nope·(W_uk c) = (W_ukᵀ q_nope)·c and P·(W_uv c) = W_uv (P·c), so attention runs as MQA with one
        "head" of keys [c | k_rope] and values c over the cached latents; W_uv is applied after.
        """
        w = linear_weight(self.wkv_b).view(self.n_heads, self.nope + self.v_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]  # [H, nope, r], [H, v, r]
        q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # [B, H, T, r]
        q = torch.cat((q_lat, q_rope), dim=-1)  # [B, H, T, r+rope]
        k = torch.cat((c_kv, k_rope), dim=-1).unsqueeze(1)  # [B, 1, S, r+rope]
        o_lat = attend(q, k, c_kv.unsqueeze(1), plan, self.scale, self.impl, dropout)  # [B, H, T, r]
        return torch.einsum("bhtr,hvr->bhtv", o_lat, w_uv)  # [B, H, T, v]
