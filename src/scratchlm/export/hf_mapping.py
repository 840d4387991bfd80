"""Our ModelConfig / parameter names ↔ transformers' Llama and DeepSeek-V3 configs and names.

Used by the parity tests and by the transformers export. Weights copy as they are (no permutation):
- RoPE: we use the rotate-half layout of transformers' Llama. DeepSeek-V3 in transformers defaults to
  `rope_interleave=True` (pairs (x0,x1),(x2,x3)… as in DeepSeek's own checkpoints); we set
  `rope_interleave=False` in the config we build, which is the same math as ours. (To write DeepSeek's
  interleaved layout instead, permute the rope rows of wq/wq_b (per head) and of wkv_a's last
  qk_rope_head_dim rows from [0, d/2, 1, d/2+1, …]-order; not needed for transformers.)
- MLA: wq/wq_a/q_norm/wq_b/wkv_a/kv_norm/wkv_b/wo ↔ q_proj/q_a_proj/q_a_layernorm/q_b_proj/
  kv_a_proj_with_mqa/kv_a_layernorm/kv_b_proj/o_proj; per-head layouts [nope | rope] for q and
  [k_nope | v] for wkv_b are the same on both sides.
- MoE: gate.weight ↔ mlp.gate.weight; buffer gate.bias ↔ mlp.gate.e_score_correction_bias; routed experts
  are stacked: experts.gate_up_proj[e] = cat(w1, w3) [2I, D], experts.down_proj[e] = w2 [D, I];
  shared.{w1,w3,w2} ↔ mlp.shared_experts.{gate,up,down}_proj. transformers' router is sigmoid-only with
  n_group = topk_group = 1 and routed_scaling_factor = 1 here.
- MTP module k ↔ DeepSeek's `model.layers.{n_layers+k}.{enorm, hnorm, eh_proj, <block>}` (transformers
  ignores these keys on load; DeepSeek's MTP concat order [emb; h] is ours too).
"""

from __future__ import annotations

from typing import Any

import torch

from scratchlm.config import ModelConfig
from scratchlm.model.hf_names import ATTN_NAMES, FFN_NAMES, MLA_NAMES

def rope_parameters(cfg: ModelConfig, deepseek: bool = False) -> dict[str, Any]:
    """transformers' rope_parameters dict for our rope_scaling (ntk has no static equivalent there)."""
    if cfg.rope_scaling == "none":
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "linear":
        return {"rope_type": "linear", "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor}
    if cfg.rope_scaling == "yarn":
        params = {
            "rope_type": "yarn",
            "rope_theta": cfg.rope_theta,
            "factor": cfg.rope_factor,
            "original_max_position_embeddings": cfg.rope_original_max_seq_len,
            "beta_fast": cfg.yarn_beta_fast,
            "beta_slow": cfg.yarn_beta_slow,
        }
        if deepseek:  # temperature in the softmax scale (mscale²), none on cos/sin — as DeepSeek-V3 ships
            params.update(mscale=1.0, mscale_all_dim=1.0)
        return params
    raise ValueError(
        f"model.rope_scaling={cfg.rope_scaling!r} has no transformers equivalent "
        "(its 'dynamic' NTK rescales with sequence length; ours is static)"
    )


def shared_config_fields(cfg: ModelConfig, deepseek: bool = False) -> dict[str, Any]:
    """The transformers config fields every architecture we export to sets the same way from `cfg`."""
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters=rope_parameters(cfg, deepseek=deepseek),
        initializer_range=cfg.init_std,
    )


def llama_config(cfg: ModelConfig, **extra: Any) -> Any:
    """A transformers LlamaConfig with the same shapes, norm eps, RoPE and tying as `cfg` (dense MHA/GQA)."""
    from transformers import LlamaConfig

    if cfg.attention != "mha" or cfg.is_moe or cfg.norm != "rmsnorm" or cfg.sliding_window:
        raise ValueError(
            "llama_config: only dense RMSNorm models with MHA/GQA/MQA and full attention map to Llama "
            f"(got attention={cfg.attention!r}, n_routed_experts={cfg.n_routed_experts}, norm={cfg.norm!r}, "
            f"sliding_window={cfg.sliding_window})"
        )
    return LlamaConfig(
        **shared_config_fields(cfg),
        intermediate_size=cfg.ffn_hidden,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        attention_bias=False,
        mlp_bias=False,
        **extra,
    )


def deepseek_v3_config(cfg: ModelConfig, **extra: Any) -> Any:
    """A transformers DeepseekV3Config matching an MLA (optionally MoE) model, with rope_interleave=False."""
    from transformers import DeepseekV3Config

    if cfg.attention != "mla" or cfg.norm != "rmsnorm" or cfg.sliding_window:
        raise ValueError("deepseek_v3_config: needs attention='mla', norm='rmsnorm' and no sliding window")
    if cfg.is_moe and (cfg.router_scoring != "sigmoid" or cfg.n_shared_experts < 1):
        raise ValueError(
            "deepseek_v3_config: transformers' DeepSeek-V3 router is sigmoid with shared experts; got "
            f"router_scoring={cfg.router_scoring!r}, n_shared_experts={cfg.n_shared_experts}"
        )
    moe = dict(
        n_routed_experts=cfg.n_routed_experts or 1,
        n_shared_experts=cfg.n_shared_experts or 1,
        num_experts_per_tok=cfg.top_k if cfg.is_moe else 1,
        moe_intermediate_size=cfg.moe_ffn_hidden,
        first_k_dense_replace=cfg.first_dense_layers if cfg.is_moe else cfg.n_layers,
        norm_topk_prob=cfg.norm_topk_prob,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=1.0,
    )
    return DeepseekV3Config(
        **shared_config_fields(cfg, deepseek=True),
        intermediate_size=cfg.ffn_hidden,
        num_key_value_heads=cfg.n_heads,
        q_lora_rank=cfg.q_lora_rank or None,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim,
        rope_interleave=False,
        num_nextn_predict_layers=cfg.mtp_depth,
        **moe,
        **extra,
    )


def _block_to_hf(sd: dict[str, torch.Tensor], src: str, dst: str, cfg: ModelConfig, out: dict) -> None:
    """Map one Block's tensors from prefix `src` (ours) to `dst` (transformers)."""
    out[f"{dst}.input_layernorm.weight"] = sd[f"{src}.attn_norm.weight"]
    out[f"{dst}.post_attention_layernorm.weight"] = sd[f"{src}.ffn_norm.weight"]
    names = MLA_NAMES if cfg.attention == "mla" else ATTN_NAMES
    for ours, theirs in names.items():
        key = f"{src}.attn.{ours}.weight"
        if key in sd:
            out[f"{dst}.self_attn.{theirs}.weight"] = sd[key]
    if f"{src}.ffn.gate.weight" in sd:  # MoE
        out[f"{dst}.mlp.gate.weight"] = sd[f"{src}.ffn.gate.weight"]
        out[f"{dst}.mlp.gate.e_score_correction_bias"] = sd[f"{src}.ffn.gate.bias"]
        E = cfg.n_routed_experts
        e = lambda i, w: sd[f"{src}.ffn.experts.{i}.{w}.weight"]  # noqa: E731
        out[f"{dst}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat((e(i, "w1"), e(i, "w3"))) for i in range(E)])
        out[f"{dst}.mlp.experts.down_proj"] = torch.stack([e(i, "w2") for i in range(E)])
        if f"{src}.ffn.shared.w1.weight" in sd:  # Mixtral-style MoE has no shared experts
            for ours, theirs in FFN_NAMES.items():
                out[f"{dst}.mlp.shared_experts.{theirs}.weight"] = sd[f"{src}.ffn.shared.{ours}.weight"]
    else:
        for ours, theirs in FFN_NAMES.items():
            out[f"{dst}.mlp.{theirs}.weight"] = sd[f"{src}.ffn.{ours}.weight"]


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], cfg: ModelConfig, mtp: bool = False) -> dict[str, torch.Tensor]:
    """Our state dict → transformers names (Llama or DeepSeek-V3 layout by cfg.attention); tensors shared.

    mtp=True also writes the MTP modules under DeepSeek's `model.layers.{n_layers+k}` names.
    """
    sd = state_dict
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layers):
        _block_to_hf(sd, f"layers.{i}", f"model.layers.{i}", cfg, out)
    if mtp:
        for k in range(cfg.mtp_depth):
            dst = f"model.layers.{cfg.n_layers + k}"
            out[f"{dst}.enorm.weight"] = sd[f"mtp.{k}.emb_norm.weight"]
            out[f"{dst}.hnorm.weight"] = sd[f"mtp.{k}.h_norm.weight"]
            out[f"{dst}.eh_proj.weight"] = sd[f"mtp.{k}.proj.weight"]
            out[f"{dst}.shared_head.norm.weight"] = sd["norm.weight"]
            _block_to_hf(sd, f"mtp.{k}.block", dst, cfg, out)
    return out


def hf_model(model: torch.nn.Module) -> Any:
    """A transformers LlamaForCausalLM / DeepseekV3ForCausalLM holding copies of `model`'s weights (fp32)."""
    import transformers

    cfg: ModelConfig = model.config
    if cfg.attention == "mla":
        hf = transformers.DeepseekV3ForCausalLM(deepseek_v3_config(cfg))
    else:
        hf = transformers.LlamaForCausalLM(llama_config(cfg))
    return load_into_hf(hf, to_hf_state_dict(model.state_dict(), cfg), cfg, "hf_model")


def load_into_hf(hf: Any, weights: dict[str, torch.Tensor], cfg: ModelConfig, who: str) -> Any:
    """Load transformers-named `weights` into the transformers model `hf` (every key must match, but a tied
    lm_head), tie the embeddings where `cfg` does, and return it in eval mode; `who` names the caller in errors."""
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"{who}: weight mapping mismatch; missing={missing}, unexpected={unexpected}")
    if cfg.tie_embeddings:
        hf.tie_weights()
    return hf.eval()
