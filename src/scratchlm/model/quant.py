"""Quantized linears, hand-written: int8 weight-only with one scale per output channel (`Int8Linear`).

A weight row w [in] is stored as q = round(w / s) in int8 with s = max|w| / 127, so q·s is w to within s/2 per
element and the largest weight of the row is exact. The forward multiplies by the int8 matrix itself
(`torch.ops.aten._weight_int8pack_mm`, the kernel torch ships for weight-only int8): the weights are read as one
byte each at every step, which is what makes decoding, a pass over all weights per token, faster.

That kernel is vectorised on a CPU only for bf16 activations (fp32 ones take a scalar loop, 10-40x slower than
an fp32 matmul, measured in torch 2.13 on an AVX-512 EPYC), so an fp32 x goes in as bf16 and the product comes
back as bf16 (8 bits of mantissa: ~0.4% relative rounding per output), then it is scaled by the fp32 scales. The
per-channel scale is applied after the kernel, in fp32, so it is not rounded to bf16.

`quantize_model` turns the linears of a float Transformer into these; `quantized_skeleton` builds the same
modules empty, so that a quantized run's weights load into them (runs.load_run). Which models can be quantized
is `check_quantizable`'s: dense Llama-style models only (MoE experts, MLA's absorbed weights and MTP heads are
refused by name).
"""

from __future__ import annotations

import typing

import torch
import torch.nn as nn

from scratchlm.config import ConfigError, ModelConfig, QuantConfig

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


def check_quantizable(cfg: ModelConfig, method: str) -> None:
    """Raise a ConfigError naming the field when a model of this config cannot be quantized with `method`."""
    if method not in METHODS:
        raise ConfigError(f"quantization method {method!r} is not supported; choose one of {', '.join(METHODS)}")
    if cfg.n_routed_experts:
        raise ConfigError(f"model.n_routed_experts={cfg.n_routed_experts}: MoE models cannot be quantized yet "
                          "(only dense Llama-style models)")
    if cfg.attention != "mha":
        raise ConfigError(f"model.attention={cfg.attention!r}: MLA cannot be quantized yet (its decode path "
                          "multiplies by wkv_b's weight matrix itself); only model.attention='mha'")
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


def quantize_model(model: nn.Module, method: str = "int8") -> nn.Module:
    """Replace the linears of a float Transformer with int8 ones, in place (returned for chaining).

    A tied lm_head is untied: the embedding keeps its float table for the lookup, the head gets its int8 copy
    (as torchao does; storing the embedding as the head's int8 rows would save its 4 bytes a weight more)."""
    check_quantizable(model.config, method)
    for owner, attr, linear in _targets(model):
        if isinstance(linear, Int8Linear):
            raise ValueError(f"{attr} is already quantized: quantize the float run it came from")
        if type(linear) is not nn.Linear:  # a LoRA-wrapped linear: its update would be lost
            raise ValueError(f"{attr} is a {type(linear).__name__}, not a plain linear: merge adapters first "
                             "(scratchlm lora merge)")
        setattr(owner, attr, Int8Linear.from_float(linear))
    return model


def quantized_skeleton(model: nn.Module, method: str) -> nn.Module:
    """A float Transformer with its target linears replaced by empty quantized ones of the same shapes, in place:
    what a quantized run's weights load into."""
    check_quantizable(model.config, method)
    for owner, attr, linear in _targets(model):
        setattr(owner, attr, Int8Linear(linear.in_features, linear.out_features, device=linear.weight.device))
    return model
