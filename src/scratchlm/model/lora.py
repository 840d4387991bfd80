"""LoRA, hand-written: a low-rank update B·A beside frozen linear weights (Hu et al., 2021).

`LoRALinear` *is* the nn.Linear it replaces (same `weight` parameter, so state-dict names and the base
checkpoint stay as they are) plus `lora_A` [r, in] (Kaiming-uniform) and `lora_B` [out, r] (zeros, so a
freshly wrapped model computes exactly what the base did): y = x·Wᵀ + dropout(x)·Aᵀ·Bᵀ·(alpha/r).
`apply_lora(model, cfg)` swaps the targeted linears (names as in our modules: wq, wk, wv, wo, w1, w2,
w3, wq_a, wq_b, wkv_a, wkv_b; an unknown name is an error listing the model's linear names), freezes
every other parameter, and returns the wrapped modules. The fused q/k/v and gate/up matmuls of
attention.py and layers.py go through `layers.fused_linear`, which adds each adapter's update, so an
adapter holds on every path (training, prefill and decode).

On disk an adapter is PEFT's layout: adapter_config.json + adapter_model.safetensors with transformers'
Llama / DeepSeek-V3 names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`), so
`peft.PeftModel.from_pretrained(hf_model_with_our_base_weights, DIR)` loads it unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.config import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Linear):
    """A bias-free nn.Linear whose weight is frozen, plus a trainable rank-r update scaled by alpha / r."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        if base.bias is not None:
            raise ValueError("LoRALinear: the model's linears are bias-free; a biased one is not supported")
        nn.Module.__init__(self)  # not nn.Linear.__init__: the weight is the base's own tensor, not a new one
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.register_parameter("bias", None)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear and PEFT initialise A
        nn.init.zeros_(self.lora_B.weight)  # B = 0: the wrapped model starts identical to the base
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's update for inputs x [..., in] → [..., out] (zero while merged into the weight)."""
        if self.merged:
            return x.new_zeros(*x.shape[:-1], self.out_features)
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        return y if self.merged else y + self.delta(x)

    def delta_weight(self) -> torch.Tensor:
        """B·A·scaling [out, in]: what merging adds to the weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with (for paths that use the matrix itself, e.g. MLA's absorption)."""
        return self.weight if self.merged else self.weight + self.delta_weight()

    @torch.no_grad()
    def merge(self) -> None:
        """Fold B·A into the weight (inference without the extra matmuls); `unmerge` undoes it."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take B·A back out of the weight."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def linear_names(model: nn.Module) -> list[str]:
    """The short names (last path part) of the model's nn.Linear modules that LoRA may target, sorted."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in ("lm_head",)})


def parse_targets(targets: str | list[str]) -> list[str]:
    """"wq,wv" → ["wq", "wv"] (whitespace and empty items dropped)."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    return [t.strip() for t in items if t.strip()]


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: str | list[str]) -> dict[str, LoRALinear]:
    """Wrap every nn.Linear whose short name is in `targets` with a LoRALinear and freeze everything else;
    returns {full module name: LoRALinear}. Unknown target names are an error listing the model's linears."""
    wanted = parse_targets(targets)
    if rank < 1:
        raise ConfigError(f"lora.rank must be at least 1, got {rank}")
    if not wanted:
        raise ConfigError("lora.targets is empty; name the linears to adapt, e.g. wq,wv")
    available = linear_names(model)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise ConfigError(f"lora.targets: unknown linear name(s) {', '.join(unknown)}; this model's linears are "
                         f"{', '.join(available)}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped: dict[str, LoRALinear] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in wanted and type(child) is nn.Linear:
                full = f"{name}.{child_name}" if name else child_name
                lora = LoRALinear(child, rank, alpha, dropout)
                setattr(module, child_name, lora)
                wrapped[full] = lora
    return wrapped


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """{name: LoRALinear} of a wrapped model (empty when it has no adapters)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors of a wrapped model, under our names (`layers.0.attn.wq.lora_A.weight`)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter and put plain nn.Linear modules back: a model with no trace of LoRA."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                child.merge()
                plain = nn.Linear(child.in_features, child.out_features, bias=False,
                                  device=child.weight.device, dtype=child.weight.dtype)
                plain.weight = child.weight
                setattr(module, child_name, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# ----------------------------------------------------------------------------------------------------
# PEFT's on-disk layout


def _peft_names(model: nn.Module) -> dict[str, str]:
    """Our adapter tensor names → PEFT's names on transformers' model (`base_model.model.<hf path>.lora_A.weight`)."""
    from scratchlm.model.hf_names import hf_module_name

    out: dict[str, str] = {}
    for key in adapter_state(model):
        module, ab, _ = key.rsplit(".", 2)  # "layers.0.attn.wq", "lora_A", "weight"
        out[key] = f"{PEFT_PREFIX}{hf_module_name(module, model.config)}.{ab}.weight"
    return out


def save_adapter(model: nn.Module, out_dir: str | Path, rank: int, alpha: float, dropout: float,
                 base_model: str = "") -> Path:
    """Write adapter_config.json + adapter_model.safetensors (PEFT's layout and names) into out_dir."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _peft_names(model)
    state = {names[k]: v.detach().to("cpu").contiguous() for k, v in adapter_state(model).items()}
    hf_targets = sorted({n.removeprefix(PEFT_PREFIX).rsplit(".", 3)[-3] for n in state})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": dropout,
        "target_modules": hf_targets, "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
        "base_model_name_or_path": base_model, "inference_mode": True,
    }
    tmp = out / (ADAPTER_WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / ADAPTER_WEIGHTS)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> dict[str, LoRALinear]:
    """Wrap `model` (holding the base weights) with the adapter saved in adapter_dir and load its tensors."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg_file = adapter_dir / ADAPTER_CONFIG
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: no adapter config (is {adapter_dir} a LoRA run?)")
    try:
        ac = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}:{e.lineno}: bad JSON ({e.msg})") from None
    from scratchlm.model.hf_names import our_linear_name

    for key in ("r", "lora_alpha", "target_modules"):
        if key not in ac:
            raise ValueError(f"{cfg_file}: missing field {key!r}")
    targets = [our_linear_name(t, model.config) for t in ac["target_modules"]]
    wrapped = apply_lora(model, int(ac["r"]), float(ac["lora_alpha"]), 0.0, targets)
    names = {v: k for k, v in _peft_names(model).items()}
    state = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    missing = sorted(set(names) - set(state))
    unexpected = sorted(set(state) - set(names))
    if missing or unexpected:
        raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: adapter tensors do not match the model "
                         f"(missing: {missing[:3]}; unexpected: {unexpected[:3]})")
    model.load_state_dict({names[k]: v for k, v in state.items()}, strict=False)
    return wrapped
