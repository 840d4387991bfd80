"""Quantized linears, hand-written: int8 weight-only with one scale per output channel (`Int8Linear`), SmoothQuant's
W8A8 (`W8A8Linear`, int8 activations too) and AWQ's group-wise int4 (`Int4Linear`), with the scale folding that
SmoothQuant and AWQ share (`fold_scales`, `smoothing_groups`).

A weight row w [in] is stored as q = round(w / s) in int8 with s = max|w| / 127, so q·s is w to within s/2 per
element and the largest weight of the row is exact. The forward multiplies by the int8 matrix itself
(`torch.ops.aten._weight_int8pack_mm`, the kernel torch ships for weight-only int8): the weights are read as one
byte each at every step, which is what makes decoding, a pass over all weights per token, faster.

That kernel is vectorised on a CPU only for bf16 activations (fp32 ones take a scalar loop, 10-40x slower than
an fp32 matmul, measured in torch 2.13 on an AVX-512 EPYC), so an fp32 x goes in as bf16 and the product comes
back as bf16 (8 bits of mantissa: ~0.4% relative rounding per output), then it is scaled by the fp32 scales. The
per-channel scale is applied after the kernel, in fp32, so it is not rounded to bf16.

`quantize_model` turns the linears of a float Transformer into these (the calibration that SmoothQuant and AWQ
need is quant/'s); `quantized_skeleton` builds the same modules empty, so that a quantized run's weights load into
them (runs.load_run). Which models can be quantized is `check_quantizable`'s: dense Llama-style models only (MoE
experts, MLA's absorbed weights and MTP heads are refused by name).
"""

from __future__ import annotations

import typing

import torch
import torch.nn as nn

from scratchlm.config import ConfigError, ModelConfig, QuantConfig

GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts (checked in torch 2.13)
QMAX = 127  # symmetric: q in [-127, 127], so -q is always representable and 0 is exact
KERNEL_DTYPE = torch.bfloat16  # the activation dtype _weight_int8pack_mm has a vectorised CPU kernel for
# The linears quantized in each Block (attention and SwiGLU) and the output head; the embedding stays float.
BLOCK_LINEARS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.w1", "ffn.w2", "ffn.w3")
METHODS = tuple(m for m in typing.get_args(typing.get_type_hints(QuantConfig)["method"]) if m != "none")


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] float → (q int8 [out, in], scales fp32 [out]) with w ≈ q·scales[:, None], |error| ≤ scale/2."""
    w = w.detach().float()
    scales = (w.abs().amax(dim=1) / QMAX).clamp(min=torch.finfo(torch.float32).tiny)  # an all-zero row: q = 0
    q = torch.round(w / scales[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scales


class Int8Linear(nn.Module):
    """A bias-free linear whose weight is int8 [out, in] (`qweight`) with an fp32 scale per output row (`scales`)."""

    def __init__(self, in_features: int, out_features: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32, device=device))
        # The kernel's own per-row scale, all ones: the real scale is applied after it in fp32 (see the docstring)
        self.register_buffer("unit", torch.ones(out_features, dtype=KERNEL_DTYPE, device=device), persistent=False)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8Linear":
        """The int8 form of a bias-free float linear (per-output-channel symmetric scales)."""
        if linear.bias is not None:
            raise ValueError("Int8Linear: linears with a bias are not supported (no linear of ours has one)")
        m = cls(linear.in_features, linear.out_features, device=linear.weight.device)
        q, s = quantize_per_channel(linear.weight)
        m.qweight.copy_(q)
        m.scales.copy_(s)
        return m

    def dequantized(self) -> torch.Tensor:
        """The float weight q·s [out, in] this module stands for (for checks and exports, not for the forward)."""
        return self.qweight.float() * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)  # [N, in]
        y = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.unit)  # [N, out] = rows · qᵀ, in bf16
        return (y.to(self.scales.dtype) * self.scales).to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows x [N, in] → (int8 [N, in], fp32 scales [N, 1]): each token its own symmetric scale, chosen at run time."""
    scales = (x.abs().amax(dim=1, keepdim=True).float() / QMAX).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(x / scales).clamp(-QMAX, QMAX).to(torch.int8), scales


class W8A8Linear(Int8Linear):
    """SmoothQuant's linear: int8 weights (per output channel) times int8 activations (per token, dynamic).

    y = (x_q · q_wᵀ) · s_x · s_w with the product of the two int8 matrices summed in int32 (`torch._int_mm`):
    nothing in the matmul is float. The activation outliers that would make a per-token int8 scale coarse were
    moved into the weights beforehand (`smooth_model`), which is what makes the int8 activations accurate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        xq, sx = quantize_per_token(rows)
        acc = torch._int_mm(xq, self.qweight.t())  # [N, out] int32: |acc| ≤ 127² · in, far below 2³¹
        y = acc.to(torch.float32) * sx * self.scales
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, W8A8 per-channel × per-token"


def smooth_scales(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors s_j = max|X_j|^α / max|W_:,j|^(1−α) ([in]): x/s and W·s give the same
    product, with the activations' outlier channels flattened by s and their range moved into the weights."""
    a = act_max.float().clamp(min=1e-5)
    w = weight_max.float().clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-5)


def smoothing_groups(model: nn.Module) -> list[tuple[str, nn.Module, list[str]]]:
    """(what the 1/s folds into, that module, the linears whose columns take s): each group shares one input.

    A norm's weight takes 1/s exactly (RMSNorm is per-channel), so do wv's rows for wo (attention averages each
    value channel separately; only when every query head has its own value head: with GQA one value channel feeds
    n_heads/n_kv_heads of wo's columns, so wo is not smoothed) and w3's rows for w2 (silu(w1 x) · w3 x is linear in
    w3 x per channel)."""
    groups = []
    for i, block in enumerate(model.layers):
        p = f"layers.{i}."
        groups.append((p + "attn_norm", block.attn_norm, [p + "attn.wq", p + "attn.wk", p + "attn.wv"]))
        if block.attn.n_kv_heads == block.attn.n_heads:
            groups.append((p + "attn.wv", block.attn.wv, [p + "attn.wo"]))
        groups.append((p + "ffn_norm", block.ffn_norm, [p + "ffn.w1", p + "ffn.w3"]))
        groups.append((p + "ffn.w3", block.ffn.w3, [p + "ffn.w2"]))
    groups.append(("norm", model.norm, ["lm_head"]))
    return groups


@torch.no_grad()
def fold_scales(model: nn.Module, owner: nn.Module, linears: list[str], s: torch.Tensor) -> None:
    """x → x/s in `owner`'s output (a norm's weight or a linear's rows) and W → W·diag(s) in `linears`: the float
    function of the model is unchanged (up to rounding)."""
    if isinstance(owner, nn.Linear):
        owner.weight.div_(s[:, None])
    else:
        owner.weight.div_(s)
    for name in linears:
        model.get_submodule(name).weight.mul_(s[None, :])


@torch.no_grad()
def smooth_model(model: nn.Module, act_max: dict[str, torch.Tensor], alpha: float) -> nn.Module:
    """Fold SmoothQuant's factors into a float model in place, from each linear's calibrated max |x| per input
    channel (`act_max`, keyed by linear name; the linears of a group share their input, so any of them)."""
    if model.lm_head.weight is model.embed.weight:  # tied: the head's columns are about to change, the table not
        model.lm_head.weight = nn.Parameter(model.embed.weight.detach().clone())
    for _, owner, linears in smoothing_groups(model):
        w_max = torch.cat([model.get_submodule(n).weight for n in linears]).abs().amax(dim=0)  # [in]
        fold_scales(model, owner, linears, smooth_scales(act_max[linears[0]], w_max, alpha))
    return model


def check_quantizable(cfg: ModelConfig, method: str, group_size: int = 0) -> None:
    """Raise a ConfigError naming the field when a model of this config cannot be quantized with `method`."""
    if method not in METHODS:
        raise ConfigError(f"quantization method {method!r} is not supported; choose one of {', '.join(METHODS)}")
    if method == "awq":
        if group_size not in GROUP_SIZES:
            raise ConfigError(f"quant.group_size={group_size}: the int4 kernel takes groups of "
                              f"{', '.join(map(str, GROUP_SIZES))}")
        widths = {"model.d_model": cfg.d_model, "model.ffn_hidden": cfg.ffn_hidden,
                  "model.n_heads × model.head_dim": cfg.n_heads * cfg.head_dim}
        for name, width in widths.items():
            if width % group_size:
                raise ConfigError(f"{name}={width} is not a multiple of quant.group_size={group_size}: every "
                                  "linear's input must split into whole groups (choose another --group-size)")
    if cfg.n_routed_experts:
        raise ConfigError(f"model.n_routed_experts={cfg.n_routed_experts}: MoE models cannot be quantized yet "
                          "(only dense Llama-style models)")
    if cfg.attention != "mha":
        raise ConfigError(f"model.attention={cfg.attention!r}: MLA cannot be quantized yet (its decode path "
                          "multiplies by wkv_b's weight matrix itself); only model.attention='mha'")
    if method != "int8" and cfg.norm != "rmsnorm":
        raise ConfigError(f"model.norm={cfg.norm!r}: {method} folds its scales into RMSNorm weights; only "
                          "model.norm='rmsnorm' (or use --method int8)")
    if cfg.mtp_depth:
        raise ConfigError(f"model.mtp_depth={cfg.mtp_depth}: models with multi-token prediction heads cannot be "
                          "quantized yet")


def _targets(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, linear) for every linear that quantization replaces."""
    out = []
    for block in model.layers:
        for path in BLOCK_LINEARS:
            owner_name, attr = path.split(".")
            owner = getattr(block, owner_name)
            out.append((owner, attr, getattr(owner, attr)))
    out.append((model, "lm_head", model.lm_head))
    return out


def quantize_per_group(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] → (q int8 in [-8, 7] [out, in], fp32 scales [out, in/group_size]): symmetric int4, one scale per
    `group_size` consecutive weights of a row (max|w_group| / 7), so w ≈ q·scale to within half a step."""
    out_f, in_f = w.shape
    groups = w.detach().float().reshape(out_f, in_f // group_size, group_size)
    scales = (groups.abs().amax(dim=-1) / 7).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(groups / scales[..., None]).clamp(-8, 7).to(torch.int8)
    return q.reshape(out_f, in_f), scales


def dequantize_per_group(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float matrix [out, in] of `quantize_per_group`'s (q, scales)."""
    out_f, in_f = q.shape
    return (q.float().reshape(out_f, scales.shape[1], -1) * scales[..., None]).reshape(out_f, in_f)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int4 values in [-8, 7] [out, in] → uint8 [out, in/2]: two per byte, the even column in the low nibble, each
    stored as q + 8."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """`pack_int4`'s inverse: uint8 [out, in/2] → int8 [out, in] in [-8, 7]."""
    lo, hi = (packed & 0xF).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)


class Int4Linear(nn.Module):
    """Group-wise int4 weights (AWQ's storage): `qweight` uint8 [out, in/2] (two weights a byte, `pack_int4`) and
    an fp32 scale per `group_size` weights of a row (`scales` [out, in/group_size]).

    The forward is torch's int4 CPU kernel (`_weight_int4pack_mm_for_cpu`, the one torchao's int4 CPU layout
    uses) on bf16 activations: it takes the weights in its own packed layout and the scales in bf16 with a zero
    point, which are made from the stored ones once, when the weights are set (`_repack`), never per step."""

    def __init__(self, in_features: int, out_features: int, group_size: int,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"Int4Linear: in_features={in_features} is not a multiple of group_size={group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("qweight", torch.full((out_features, in_features // 2), 0x88, dtype=torch.uint8,
                                                   device=device))
        self.register_buffer("scales", torch.ones(out_features, in_features // group_size, device=device))
        self.register_buffer("kernel_weight", torch.empty(0, dtype=torch.uint8, device=device), persistent=False)
        self.register_buffer("kernel_scales", torch.empty(0, dtype=KERNEL_DTYPE, device=device), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._repack())
        self._repack()

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int) -> "Int4Linear":
        """The int4 form of a bias-free float linear (`quantize_per_group`)."""
        m = cls(linear.in_features, linear.out_features, group_size, device=linear.weight.device)
        q, s = quantize_per_group(linear.weight, group_size)
        m.qweight.copy_(pack_int4(q))
        m.scales.copy_(s)
        m._repack()
        return m

    @torch.no_grad()
    def _repack(self) -> None:
        """The kernel's operands from the stored weights: its packed layout of q + 8, and [in/g, out, 2] bf16
        (scale, zero) pairs with zero 0 (the kernel computes (u − 8)·scale + zero)."""
        u = (unpack_int4(self.qweight).to(torch.int32) + 8)
        self.kernel_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.cpu(), 1).to(self.qweight.device)
        s = self.scales.to(KERNEL_DTYPE)
        self.kernel_scales = torch.stack((s, torch.zeros_like(s)), dim=-1).transpose(0, 1).contiguous()

    def dequantized(self) -> torch.Tensor:
        """The float weight [out, in] this module stands for."""
        return dequantize_per_group(unpack_int4(self.qweight), self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(KERNEL_DTYPE).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.kernel_weight, self.group_size, self.kernel_scales)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of "
                f"{self.group_size}")


LINEAR_CLASSES = {"int8": Int8Linear, "smoothquant": W8A8Linear, "awq": Int4Linear}


def linear_names(model: nn.Module) -> list[str]:
    """The names of the linears quantization replaces (every Block's seven and the head)."""
    return [f"layers.{i}.{p}" for i in range(len(model.layers)) for p in BLOCK_LINEARS] + ["lm_head"]


def quantize_model(model: nn.Module, method: str = "int8", group_size: int = 0) -> nn.Module:
    """Replace the linears of a float Transformer with `method`'s quantized ones, in place (returned for chaining);
    smoothquant expects `smooth_model` to have run first, awq `quant/awq.py`'s scales (and a group_size).

    A tied lm_head is untied: the embedding keeps its float table for the lookup, the head gets its int8 copy
    (as torchao does; storing the embedding as the head's int8 rows would save its 4 bytes a weight more)."""
    check_quantizable(model.config, method, group_size)
    cls = LINEAR_CLASSES[method]
    for owner, attr, linear in _targets(model):
        if isinstance(linear, (Int8Linear, Int4Linear)):
            raise ValueError(f"{attr} is already quantized: quantize the float run it came from")
        if type(linear) is not nn.Linear:  # a LoRA-wrapped linear: its update would be lost
            raise ValueError(f"{attr} is a {type(linear).__name__}, not a plain linear: merge adapters first "
                             "(scratchlm lora merge)")
        setattr(owner, attr, cls.from_float(linear, group_size) if cls is Int4Linear else cls.from_float(linear))
    return model


def quantized_skeleton(model: nn.Module, quant: QuantConfig) -> nn.Module:
    """A float Transformer with its target linears replaced by empty quantized ones of the same shapes (the run's
    config.toml [quant] says which), in place: what a quantized run's weights load into."""
    check_quantizable(model.config, quant.method, quant.group_size)
    cls = LINEAR_CLASSES[quant.method]
    for owner, attr, linear in _targets(model):
        shape = (linear.in_features, linear.out_features)
        setattr(owner, attr, cls(*shape, quant.group_size, device=linear.weight.device) if cls is Int4Linear
                else cls(*shape, device=linear.weight.device))
    return model
