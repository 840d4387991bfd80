"""Building blocks shared by every model variant: norms (RMSNorm, DyT), the SwiGLU feed-forward, and RoPE.

RoPE uses the "rotate-half" convention of transformers' Llama (the first half of each head's dims pairs
with the second half), so our weights copy into `LlamaForCausalLM` without any permutation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.config import ModelConfig

# Below this many rows (tokens), projections that share an input run as separate matmuls instead of one
# matmul over concatenated weights (the concat copies the weights every call).
FUSE_MIN_ROWS = 64


class RMSNorm(nn.Module):
    """Root-mean-square norm: x / rms(x) · weight (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _RMSNormFn.apply(x, self.weight, self.eps)  # training: fewer passes over x
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # inference: one fused kernel
        # Low precision (autocast): normalise in fp32 (as Llama does) so bf16 activations don't lose the
        # small rms terms; like Llama, the fp32 weight makes the output fp32.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class _RMSNormFn(torch.autograd.Function):
    """fp32 RMSNorm with a hand-written backward: autograd through the op chain (pow, mean, rsqrt, two muls)
    makes about twice as many passes over the activations as the closed form below.

    y = x̂·w with x̂ = x·r, r = rsqrt(mean(x²) + eps):  dw = Σ_rows g·x̂,  dx = r·(g·w − x̂·mean(g·w·x̂)).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1]
        xhat = x * r
        ctx.save_for_backward(xhat, r, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        xhat, r, weight = ctx.saved_tensors
        dw = (g * xhat).reshape(-1, xhat.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        dx = None
        if ctx.needs_input_grad[0]:
            gw = g * weight
            dx = (gw - xhat * (gw * xhat).mean(-1, keepdim=True)) * r
        return dx, dw, None


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Σ −log softmax(logits)[target] over rows whose target != ignore_index (logits [N, V], targets [N])."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, V] and targets [N]; got {tuple(logits.shape)} and {tuple(targets.shape)}")
    return _CrossEntropySumFn.apply(logits, targets, ignore_index)


class _CrossEntropySumFn(torch.autograd.Function):
    """Cross-entropy that keeps its log-softmax and turns it into the gradient in place.

    F.cross_entropy's backward zero-fills an [N, V] gradient, scatters into it, and reads it back with the
    saved log-probabilities (log_softmax_backward); here the saved log-probabilities become
    softmax − onehot directly: ∂/∂logits = g·(exp(log p) − onehot). Measured on the CPU at 2048 × 6400 fp32,
    forward + backward: 76 ms vs 165 ms.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)  # [N, V], owned here: backward may overwrite it
        valid = targets != ignore_index  # [N]
        safe = targets.masked_fill(~valid, 0)[:, None]  # [N, 1]: ignored rows point at class 0, then count 0
        picked = logp.gather(1, safe).squeeze(1)  # [N]
        ctx.save_for_backward(logp, safe, valid)
        ctx.spent = False
        return -(picked * valid).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        if ctx.spent:  # the saved buffer already holds a gradient: a second pass would be silently wrong
            raise RuntimeError("cross_entropy_sum supports one backward pass per forward (retain_graph=True "
                               "with a second backward is not supported); recompute the loss instead")
        ctx.spent = True
        logp, safe, valid = ctx.saved_tensors
        grad = logp.exp_()  # softmax, in the saved buffer
        grad.scatter_add_(1, safe, grad.new_full(safe.shape, -1.0))
        # g·valid [N, 1]: ignored rows get no gradient (no data-dependent branch: no device sync, no graph break)
        return grad.mul_(g * valid.to(grad.dtype)[:, None]), None, None


def token_nll(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """−log softmax(logits)[target] per row [N] (0 where target == ignore_index), for logits [N, V]; same
    memory-saving backward as `cross_entropy_sum`, with one incoming gradient per row."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, V] and targets [N]; got {tuple(logits.shape)} and {tuple(targets.shape)}")
    return _TokenNLLFn.apply(logits, targets, ignore_index)


class _TokenNLLFn(torch.autograd.Function):
    """Per-row cross-entropy: ∂nll_i/∂logits_i = softmax_i − onehot_i, scaled by row i's incoming gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)  # [N, V]
        valid = targets != ignore_index  # [N]
        safe = targets.masked_fill(~valid, 0)[:, None]  # [N, 1]
        ctx.save_for_backward(logp, safe, valid)
        ctx.spent = False
        return -(logp.gather(1, safe).squeeze(1) * valid)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        if ctx.spent:
            raise RuntimeError("token_nll supports one backward pass per forward; recompute it instead")
        ctx.spent = True
        logp, safe, valid = ctx.saved_tensors
        grad = logp.exp_()
        grad.scatter_add_(1, safe, grad.new_full(safe.shape, -1.0))
        return grad.mul_((g * valid.to(grad.dtype))[:, None]), None, None


class DyT(nn.Module):
    """Dynamic Tanh ("Transformers without Normalization"): weight · tanh(alpha · x) + bias."""

    def __init__(self, dim: int, alpha: float = 0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))  # one learnable scalar per norm
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """The norm layer cfg.norm asks for, over the last dimension of size `dim`."""
    if cfg.norm == "dyt":
        return DyT(dim, cfg.dyt_alpha)
    return RMSNorm(dim, cfg.norm_eps)


def fused_linear(x: torch.Tensor, linears: list[nn.Linear]) -> list[torch.Tensor]:
    """x through several bias-free linears with one matmul over their concatenated weights (one kernel for
    the output and one for the input gradient); a LoRA-wrapped linear's update is added to its slice, so
    adapters hold on the fused path too. Quantized linears run one by one: ours (model/quant.py) have no float
    weight, torchao's weights are tensor subclasses that cannot be concatenated."""
    if not all(type(getattr(m, "weight", None)) in (torch.Tensor, nn.Parameter) for m in linears):
        return [m(x) for m in linears]
    out = F.linear(x, torch.cat([m.weight for m in linears])).split([m.out_features for m in linears], dim=-1)
    return [y + m.delta(x) if hasattr(m, "delta") and not m.merged else y for y, m in zip(out, linears)]


def linear_weight(m: nn.Linear) -> torch.Tensor:
    """The weight a linear computes with, a LoRA update included (for code that uses the matrix itself)."""
    return m.effective_weight() if hasattr(m, "effective_weight") else m.weight


class SwiGLU(nn.Module):
    """Gated feed-forward: w2(silu(w1 x) · w3 x); w1 = gate, w3 = up, w2 = down, all bias-free."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() >= FUSE_MIN_ROWS * x.shape[-1]:
            # gate and up in one matmul (weights concatenated, parameters kept separate for their names)
            gate, up = fused_linear(x, [self.w1, self.w3])
        else:  # few rows (decoding, a lightly used expert): the weight concat would dominate
            gate, up = self.w1(x), self.w3(x)
        return self.dropout(self.w2(F.silu(gate) * up))


# ----------------------------------------------------------------------------------------------------
# RoPE


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN attention temperature 0.1·mscale·ln(factor) + 1 (1 when factor ≤ 1)."""
    if factor <= 1:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def _yarn_correction_dim(num_rotations: float, dim: int, base: float, max_pos: int) -> float:
    # The dimension index whose wavelength makes `num_rotations` full turns over `max_pos` positions.
    return (dim * math.log(max_pos / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def rope_inv_freq(cfg: ModelConfig, dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [dim/2] for a rotary dim, and the factor that scales cos/sin (YaRN's mscale).

    none: θ^(-2i/d). linear: positions / factor, i.e. inv_freq / factor. ntk: NTK-aware base change
    θ·factor^(d/(d-2)) (static). yarn: per-dim blend between interpolated (÷factor) and original
    frequencies, ramped between beta_fast and beta_slow rotations over rope_original_max_seq_len —
    the same numbers as transformers' `_compute_yarn_parameters` (truncate=True).
    """
    theta, factor = cfg.rope_theta, cfg.rope_factor
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim  # [dim/2]
    scaling = cfg.rope_scaling
    if scaling == "ntk":
        theta = theta * factor ** (dim / (dim - 2))
    inv_freq = 1.0 / (theta**exponents)
    if scaling == "linear":
        return inv_freq / factor, 1.0
    if scaling != "yarn":
        return inv_freq, 1.0
    low = _yarn_correction_dim(cfg.yarn_beta_fast, dim, theta, cfg.rope_original_max_seq_len)
    high = _yarn_correction_dim(cfg.yarn_beta_slow, dim, theta, cfg.rope_original_max_seq_len)
    low, high = max(math.floor(low), 0), min(math.ceil(high), dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 → high-frequency dims keep their original frequency (extrapolate)
    inv_freq = (inv_freq / factor) * (1 - keep) + inv_freq * keep
    return inv_freq, yarn_mscale(factor)


def rope_cache(
    cfg: ModelConfig, dim: int, max_len: int, apply_mscale: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precomputed (cos, sin), each [max_len, dim], in the rotate-half layout (freqs repeated twice), with
    the sign of rotate_half folded into sin: its first half is negated (see `apply_rope`).

    apply_mscale=False leaves YaRN's temperature out of cos/sin (MLA puts it in the softmax scale instead).
    """
    inv_freq, mscale = rope_inv_freq(cfg, dim)
    mscale = mscale if apply_mscale else 1.0
    pos = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)  # [max_len, dim/2]
    sin = freqs.sin() * mscale
    return torch.cat((freqs, freqs), dim=-1).cos() * mscale, torch.cat((-sin, sin), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (-x2, x1) over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (x2, x1) over the two halves of the last dim (rotate_half without its minus sign)."""
    return x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, d] by cos/sin from `rope_cache`, broadcastable to it (e.g. [B, 1, T, d] or [T, d]).

    This is Llama's x·cos + rotate_half(x)·sin: rope_cache's sin carries rotate_half's sign, so the rotation
    is one swap of halves and one fused multiply-add (three passes over x instead of six).
    """
    return torch.addcmul(x * cos, swap_halves(x), sin)
