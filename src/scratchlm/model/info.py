"""`scratchlm model info PRESET`: parameters, KV-cache size and FLOPs per token, computed from a
ModelConfig alone (no model is built, so it works for shapes too big for this machine).

Counting rules (tests check them against `sum(p.numel())` of a real model):
- total parameters count the embedding once when the lm_head is tied to it;
- active parameters count, in each MoE layer, the router, the shared experts and only top_k of the
  routed experts (what one token touches);
- MTP modules are training-only but are parameters of the model, so they are in the total; the
  forward FLOPs below describe generation and leave them out.

Forward FLOPs per token at context `ctx` (the Kaplan et al. 2020 approximation, stated so the
numbers can be checked by hand):

    FLOPs ≈ 2 · N_matmul  +  2 · n_layers · ctx · n_heads · (d_qk + d_v)

where N_matmul = active parameters of the main model − the input embedding table + the lm_head
(V·d, counted even when tied: it is a real matmul), i.e. every weight one token multiplies once;
the second term is QKᵀ and attention·V against `ctx` cached positions (d_qk = head_dim, or
qk_nope_head_dim + qk_rope_head_dim for MLA; d_v = head_dim or v_head_dim). With a sliding window
ctx is capped at the window. Norm weights are counted as parameters; their few FLOPs are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchlm.config import ModelConfig, load_config

_BYTES = {"bf16": 2, "fp32": 4}


def _norm_params(cfg: ModelConfig, dim: int) -> int:
    """RMSNorm has a weight; DyT a weight, a bias and one scalar alpha."""
    return dim if cfg.norm == "rmsnorm" else 2 * dim + 1


def attention_params(cfg: ModelConfig) -> int:
    """Parameters of one attention layer (MHA/GQA/MQA or MLA), norms inside MLA included."""
    d, H = cfg.d_model, cfg.n_heads
    if cfg.attention == "mla":
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank:
            # q_norm on the compressed query is always an RMSNorm (as in DeepSeek)
            q = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * H * qk
        else:
            q = d * H * qk
        kv = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank  # wkv_a + kv_norm
        kv += cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + cfg.v_head_dim)  # wkv_b
        return q + kv + H * cfg.v_head_dim * d
    hd = cfg.head_dim
    return d * H * hd + 2 * d * cfg.n_kv_heads * hd + H * hd * d


def ffn_params(cfg: ModelConfig, layer: int, active: bool = False) -> int:
    """Parameters of block `layer`'s feed-forward: dense SwiGLU, or MoE (router + experts + shared)."""
    d = cfg.d_model
    if not cfg.layer_is_moe(layer):
        return 3 * d * cfg.ffn_hidden
    expert = 3 * d * cfg.moe_ffn_hidden
    n_routed = cfg.top_k if active else cfg.n_routed_experts
    shared = 3 * d * cfg.n_shared_experts * cfg.moe_ffn_hidden if cfg.n_shared_experts else 0
    return cfg.n_routed_experts * d + n_routed * expert + shared


def block_params(cfg: ModelConfig, layer: int, active: bool = False) -> int:
    """One transformer block: two norms, attention, feed-forward."""
    return 2 * _norm_params(cfg, cfg.d_model) + attention_params(cfg) + ffn_params(cfg, layer, active)


def mtp_params(cfg: ModelConfig, active: bool = False) -> int:
    """DeepSeek-V3 MTP modules: two norms, a 2d→d projection and one block each (head shared)."""
    d = cfg.d_model
    # the MTP block sits after the last layer, so it is MoE exactly when the last layer is
    per = 2 * _norm_params(cfg, d) + 2 * d * d + block_params(cfg, cfg.n_layers - 1, active)
    return cfg.mtp_depth * per


def count_params(cfg: ModelConfig, active: bool = False, mtp: bool = True) -> int:
    """Total (or active) parameters; a tied embedding is counted once."""
    V, d = cfg.vocab_size, cfg.d_model
    n = V * d + _norm_params(cfg, d)  # embedding + final norm
    if not cfg.tie_embeddings:
        n += V * d
    n += sum(block_params(cfg, i, active) for i in range(cfg.n_layers))
    if mtp:
        n += mtp_params(cfg, active)
    return n


def kv_bytes_per_token(cfg: ModelConfig, bytes_per_value: int) -> int:
    """KV-cache bytes one token occupies across all layers (MLA caches the latent + the rope key)."""
    if cfg.attention == "mla":
        per_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    else:
        per_layer = 2 * cfg.n_kv_heads * cfg.head_dim
    return per_layer * cfg.n_layers * bytes_per_value


def flops_per_token(cfg: ModelConfig, ctx: int) -> int:
    """Forward FLOPs for one token attending to `ctx` positions (formula in the module docstring)."""
    if cfg.attention == "mla":
        d_qk, d_v = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    else:
        d_qk = d_v = cfg.head_dim
    if cfg.sliding_window:
        ctx = min(ctx, cfg.sliding_window)
    matmul = count_params(cfg, active=True, mtp=False) - cfg.vocab_size * cfg.d_model
    if cfg.tie_embeddings:
        matmul += cfg.vocab_size * cfg.d_model  # the tied lm_head still multiplies
    matmul -= _norm_params(cfg, cfg.d_model) * (2 * cfg.n_layers + 1)  # norms are not matmuls
    return 2 * matmul + 2 * cfg.n_layers * ctx * cfg.n_heads * (d_qk + d_v)


@dataclass
class ModelInfo:
    """The numbers `scratchlm model info` prints."""

    total_params: int
    active_params: int
    kv_bytes_bf16: int
    kv_bytes_fp32: int
    ctx: int
    flops_per_token: int
    kind: str


def describe(cfg: ModelConfig) -> str:
    """Short name of the variant: dense/MoE × MHA/GQA/MQA/MLA."""
    if cfg.attention == "mla":
        attn = "MLA"
    elif cfg.n_kv_heads == cfg.n_heads:
        attn = "MHA"
    elif cfg.n_kv_heads == 1:
        attn = "MQA"
    else:
        attn = f"GQA ({cfg.n_heads} q heads / {cfg.n_kv_heads} kv heads)"
    ffn = f"MoE ({cfg.n_routed_experts} routed, top-{cfg.top_k}, {cfg.n_shared_experts} shared)" if cfg.is_moe else "dense"
    return f"{attn}, {ffn}"


def model_info(cfg: ModelConfig, ctx: int | None = None) -> ModelInfo:
    """All the numbers for one config; ctx defaults to max_seq_len."""
    ctx = cfg.max_seq_len if ctx is None else ctx
    if ctx < 1:
        raise ValueError(f"model info: --ctx={ctx} must be >= 1")
    return ModelInfo(
        total_params=count_params(cfg),
        active_params=count_params(cfg, active=True),
        kv_bytes_bf16=kv_bytes_per_token(cfg, _BYTES["bf16"]),
        kv_bytes_fp32=kv_bytes_per_token(cfg, _BYTES["fp32"]),
        ctx=ctx,
        flops_per_token=flops_per_token(cfg, ctx),
        kind=describe(cfg),
    )


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def print_info(preset: str, overrides: list[str] | None = None, ctx: int | None = None) -> ModelInfo:
    """Load a preset (with --set overrides) and print its table; returns the numbers."""
    from rich.console import Console
    from rich.table import Table

    cfg = load_config(preset, overrides or []).model
    info = model_info(cfg, ctx)
    table = Table(title=f"model info: {preset} — {info.kind}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("exact", justify="right")
    table.add_row("total parameters" + (" (tied embedding once)" if cfg.tie_embeddings else ""),
                  _human(info.total_params), f"{info.total_params:,}")
    table.add_row("active parameters per token", _human(info.active_params), f"{info.active_params:,}")
    if cfg.mtp_depth:
        n_mtp = mtp_params(cfg)
        table.add_row(f"  of which MTP ({cfg.mtp_depth} module(s), training only)", _human(n_mtp), f"{n_mtp:,}")
    table.add_row("KV cache per token, bf16", _human(info.kv_bytes_bf16, "B"), f"{info.kv_bytes_bf16:,}")
    table.add_row("KV cache per token, fp32", _human(info.kv_bytes_fp32, "B"), f"{info.kv_bytes_fp32:,}")
    full = info.kv_bytes_bf16 * (min(cfg.max_seq_len, cfg.sliding_window) if cfg.sliding_window else cfg.max_seq_len)
    table.add_row(f"KV cache per sequence at {cfg.max_seq_len} tokens, bf16", _human(full, "B"), f"{full:,}")
    table.add_row(f"forward FLOPs per token at ctx={info.ctx}", _human(info.flops_per_token, "FLOP"),
                  f"{info.flops_per_token:,}")
    console = Console()
    console.print(table)
    console.print(
        "FLOPs ≈ 2·N_matmul + 2·n_layers·ctx·n_heads·(d_qk + d_v); N_matmul = active params − embedding "
        "− norms + lm_head (V·d, even when tied); MTP excluded.",
        style="dim",
    )
    return info
