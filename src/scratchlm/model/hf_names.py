"""Our linear names <-> transformers' (Llama and DeepSeek-V3) names: the tables the export and PEFT-layout
LoRA adapters share. The full state-dict mapping lives in export/hf_mapping.py."""

from __future__ import annotations

from scratchlm.config import ModelConfig

ATTN_NAMES = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj"}
MLA_NAMES = {
    "wq": "q_proj",
    "wq_a": "q_a_proj",
    "q_norm": "q_a_layernorm",
    "wq_b": "q_b_proj",
    "wkv_a": "kv_a_proj_with_mqa",
    "kv_norm": "kv_a_layernorm",
    "wkv_b": "kv_b_proj",
    "wo": "o_proj",
}
FFN_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def hf_module_name(ours: str, cfg: ModelConfig) -> str:
    """Our path of one linear (`layers.3.attn.wq`, `layers.0.ffn.shared.w1`, `mtp.0.block.ffn.w2`) → its
    transformers path (`model.layers.3.self_attn.q_proj`, ...): the names PEFT adapters are saved under."""
    parts = ours.split(".")
    if parts[0] == "layers" and len(parts) >= 4:
        block, rest = f"model.layers.{parts[1]}", parts[2:]
    elif parts[0] == "mtp" and len(parts) >= 5 and parts[2] == "block":
        block, rest = f"model.layers.{cfg.n_layers + int(parts[1])}", parts[3:]
    else:
        raise ValueError(f"{ours}: not a linear inside a transformer block")
    attn = MLA_NAMES if cfg.attention == "mla" else ATTN_NAMES
    if rest[0] == "attn" and len(rest) == 2 and rest[1] in attn:
        return f"{block}.self_attn.{attn[rest[1]]}"
    if rest[0] == "ffn" and len(rest) == 2 and rest[1] in FFN_NAMES:
        return f"{block}.mlp.{FFN_NAMES[rest[1]]}"
    if rest[:2] == ["ffn", "shared"] and len(rest) == 3 and rest[2] in FFN_NAMES:
        return f"{block}.mlp.shared_experts.{FFN_NAMES[rest[2]]}"
    raise ValueError(f"{ours}: no single transformers linear (routed MoE experts are stacked there)")


def our_linear_name(hf_name: str, cfg: ModelConfig) -> str:
    """transformers' short linear name (q_proj, gate_proj, kv_b_proj, ...) → ours (wq, w1, wkv_b, ...)."""
    table = {**{v: k for k, v in (MLA_NAMES if cfg.attention == "mla" else ATTN_NAMES).items()}, **{v: k for k, v in FFN_NAMES.items()}}
    if hf_name not in table:
        raise ValueError(f"{hf_name!r} is not a linear of this model in transformers' names; known: {', '.join(sorted(table))}")
    return table[hf_name]
