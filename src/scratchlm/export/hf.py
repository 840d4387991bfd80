"""Export a run folder to a transformers folder that plain `transformers` loads, and import one back.

Which class a config exports to (`hf_architecture`):
- dense RMSNorm, MHA/GQA/MQA, full attention → `LlamaForCausalLM` (same math: rotate-half RoPE, SwiGLU);
- MLA, dense or MoE with a sigmoid router and shared experts → `DeepseekV3ForCausalLM`;
- MoE on plain attention with a softmax router, renormalised top-k, no shared experts, every layer MoE and
  no capacity limit → `MixtralForCausalLM` (its router is exactly that);
- anything else (DyT norms, a sliding window, dynamic NTK RoPE, shared experts on plain attention, a
  softmax router on MLA) has no native class computing the same function; `custom=True` writes our
  registered `ScratchLMForCausalLM` instead (model/hf.py), which needs scratchlm installed to load.
MTP modules are a training aid: transformers' DeepSeek-V3 does not run them, so the export leaves them out.

The folder also holds the tokenizer (tokenizer.json + tokenizer_config.json with the chat template) and a
generation_config.json whose eos is <|im_end|> (then <|endoftext|>), so `generate()` stops at a turn's end.
A LoRA run exports as the base model plus a PEFT adapter folder (`adapter/`), or merged (`merge=True`).
config.json also keeps our full ModelConfig under "scratchlm_model", so `import_hf` gives the run back
exactly (training-only fields such as aux_loss_coef have no transformers name).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from scratchlm.config import Config, ConfigError, ModelConfig

EOS_TOKEN_ID = 2  # <|im_end|> (tokenizer.SPECIAL_TOKENS order: <|endoftext|>, <|im_start|>, <|im_end|>)
PAD_TOKEN_ID = 0  # <|endoftext|>
ADAPTER_SUBDIR = "adapter"
OUR_CONFIG_KEY = "scratchlm_model"
DTYPES = ("float32", "bfloat16", "float16")


def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers class that computes the same function as `cfg`; a ConfigError naming the field if none."""
    if cfg.norm != "rmsnorm":
        raise ConfigError(f"model.norm={cfg.norm!r}: transformers has no native model with DyT norms "
                          "(export with --custom for our registered class)")
    if cfg.sliding_window:
        raise ConfigError(f"model.sliding_window={cfg.sliding_window}: Llama and DeepSeek-V3 attend to the whole "
                          "context (export with --custom for our registered class)")
    if cfg.rope_scaling == "ntk":
        raise ConfigError("model.rope_scaling='ntk': transformers' dynamic NTK rescales with the sequence length, "
                          "ours is static (export with --custom for our registered class)")
    if cfg.attention == "mla":
        if cfg.is_moe and cfg.router_scoring != "sigmoid":
            raise ConfigError(f"model.router_scoring={cfg.router_scoring!r}: transformers' DeepSeek-V3 routes with "
                              "sigmoid scores (export with --custom for our registered class)")
        if cfg.is_moe and cfg.n_shared_experts < 1:
            raise ConfigError("model.n_shared_experts=0: transformers' DeepSeek-V3 always has shared experts "
                              "(export with --custom for our registered class)")
        return "DeepseekV3ForCausalLM"
    if cfg.is_moe:
        for field, ok, why in (
            ("n_shared_experts", cfg.n_shared_experts == 0, "Mixtral has no shared experts"),
            ("router_scoring", cfg.router_scoring == "softmax", "Mixtral routes by softmax"),
            ("norm_topk_prob", cfg.norm_topk_prob, "Mixtral renormalises the top-k weights"),
            ("first_dense_layers", cfg.first_dense_layers == 0, "every Mixtral layer is MoE"),
            ("capacity_factor", cfg.capacity_factor == 0, "Mixtral drops no tokens"),
        ):
            if not ok:
                raise ConfigError(f"model.{field}={getattr(cfg, field)!r}: MoE on plain attention exports as Mixtral, "
                                  f"but {why} (export with --custom for our registered class)")
        return "MixtralForCausalLM"
    return "LlamaForCausalLM"


def mixtral_model(model: Any) -> Any:
    """A transformers MixtralForCausalLM holding copies of `model`'s weights (MoE on plain attention)."""
    import transformers

    from scratchlm.export.hf_mapping import load_into_hf, shared_config_fields, to_hf_state_dict

    cfg: ModelConfig = model.config
    hf = transformers.MixtralForCausalLM(transformers.MixtralConfig(
        **shared_config_fields(cfg), intermediate_size=cfg.moe_ffn_hidden, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, sliding_window=None, num_local_experts=cfg.n_routed_experts,
        num_experts_per_tok=cfg.top_k, router_jitter_noise=0.0,
    ))
    weights = to_hf_state_dict(model.state_dict(), cfg)
    for key in [k for k in weights if k.endswith("e_score_correction_bias")]:
        if bool(weights.pop(key).any()):  # the balancing bias steers the choice; Mixtral's router has none
            raise ConfigError(f"model.bias_balancing: {key.replace('model.', '', 1)} is not zero (balancing moved "
                              "the routing bias); Mixtral has no such bias (export with --custom)")
    return load_into_hf(hf, weights, cfg, "mixtral_model")


def export_hf(run_dir: str | Path, out: str | Path, merge: bool = False, custom: bool = False,
              dtype: str = "float32") -> Path:
    """Write `run_dir` as a transformers folder at `out` (LoRA runs: base + `adapter/`, or merged); returns `out`."""
    import torch

    from scratchlm.export.hf_mapping import hf_model
    from scratchlm.model.lora import merge_lora
    from scratchlm.runs import load_run, refuse_quantized, run_kind

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    run_dir, out = Path(run_dir), Path(out)
    refuse_quantized(run_dir, "export hf")  # the formats hold float (or their own quantized) weights
    model, tokenizer, cfg = load_run(run_dir)
    if cfg.train.objective == "reward":
        raise ConfigError(f"{run_dir}: a reward model (train.objective='reward') has a score head that no "
                          "causal-LM class holds; export its policy run instead")
    if tokenizer is None:
        raise FileNotFoundError(f"{run_dir}: no tokenizer.json; the export needs the run's tokenizer")
    adapter = run_kind(run_dir) == "adapter" and not merge
    if adapter and custom:
        raise ConfigError(f"{run_dir}: a LoRA run exports to our registered class only merged (--merge): its PEFT "
                          "adapter names transformers' Llama / DeepSeek-V3 modules")
    if run_kind(run_dir) == "adapter" and merge:
        merge_lora(model)
    if adapter:  # the base run's weights, as they are on disk, and the adapter beside them
        model, _, _ = load_run(cfg.lora.base)
    out.mkdir(parents=True, exist_ok=True)
    if not adapter and (out / ADAPTER_SUBDIR).is_dir():  # from an earlier unmerged export into the same folder
        shutil.rmtree(out / ADAPTER_SUBDIR)
    torch_dtype = getattr(torch, dtype)
    gen = {"eos_token_id": [EOS_TOKEN_ID, PAD_TOKEN_ID], "pad_token_id": PAD_TOKEN_ID, "bos_token_id": None}
    if custom:
        from scratchlm.model.hf import ScratchLMForCausalLM

        hf = ScratchLMForCausalLM.from_transformer(model, eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID)
    else:
        arch = hf_architecture(cfg.model)  # the clear error first
        hf = mixtral_model(model) if arch == "MixtralForCausalLM" else hf_model(model)
        hf.config.eos_token_id, hf.config.pad_token_id, hf.config.bos_token_id = EOS_TOKEN_ID, PAD_TOKEN_ID, None
        if hasattr(hf.config, "num_nextn_predict_layers"):  # DeepSeek-V3: the MTP modules are left out
            hf.config.num_nextn_predict_layers = 0
        setattr(hf.config, OUR_CONFIG_KEY, _model_config_dict(cfg.model))
    hf.config.use_cache = True
    hf.to(torch_dtype)
    hf.generation_config = _generation_config(gen)
    hf.save_pretrained(out)
    tokenizer.save(out)
    if adapter:
        _write_adapter(run_dir, out)
    return out


def _model_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["mtp_depth"] = 0  # the export leaves the MTP modules out
    return d


def _generation_config(values: dict[str, Any]) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(**values)


def _write_adapter(run_dir: Path, out: Path) -> None:
    """Copy the PEFT adapter, pointing it at the exported base (PEFT resolves the path from where it runs)."""
    from scratchlm.model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    dst = out / ADAPTER_SUBDIR
    dst.mkdir(exist_ok=True)
    shutil.copyfile(run_dir / ADAPTER_WEIGHTS, dst / ADAPTER_WEIGHTS)
    ac = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    ac["base_model_name_or_path"] = str(out.resolve())
    (dst / ADAPTER_CONFIG).write_text(json.dumps(ac, indent=2) + "\n", encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(out / name, dst / name)


# ----------------------------------------------------------------------------------------------------
# import


def model_config_from_hf(hf_cfg: Any, where: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a transformers Llama / Mixtral / DeepSeek-V3 config (ours or a user's); errors name the field."""
    ours = getattr(hf_cfg, OUR_CONFIG_KEY, None)
    if isinstance(ours, dict):  # our own export: the full config, checked against the shapes below
        known = {f.name for f in fields(ModelConfig)}
        cfg = ModelConfig(**{k: v for k, v in ours.items() if k in known})
        _check_shapes(cfg, hf_cfg, where)
        return cfg
    mt = hf_cfg.model_type
    rope = _rope_fields(getattr(hf_cfg, "rope_parameters", None) or {}, where)
    common = dict(
        vocab_size=hf_cfg.vocab_size, d_model=hf_cfg.hidden_size, n_layers=hf_cfg.num_hidden_layers,
        n_heads=hf_cfg.num_attention_heads, max_seq_len=hf_cfg.max_position_embeddings,
        norm_eps=hf_cfg.rms_norm_eps, tie_embeddings=bool(hf_cfg.tie_word_embeddings),
        init_std=getattr(hf_cfg, "initializer_range", 0.02), ffn_hidden=hf_cfg.intermediate_size, **rope,
    )
    if mt == "llama":
        for name in ("attention_bias", "mlp_bias"):
            if getattr(hf_cfg, name, False):
                raise ConfigError(f"{where}: {name}=true; our linears have no biases")
        if getattr(hf_cfg, "hidden_act", "silu") != "silu":
            raise ConfigError(f"{where}: hidden_act={hf_cfg.hidden_act!r}; our FFN is SwiGLU (silu)")
        return ModelConfig(n_kv_heads=hf_cfg.num_key_value_heads, head_dim=getattr(hf_cfg, "head_dim", None), **common)
    if mt == "deepseek_v3":
        if getattr(hf_cfg, "rope_interleave", True):
            raise ConfigError(f"{where}: rope_interleave=true (DeepSeek's own layout); we import the rotate-half "
                              "layout our export writes")
        moe = hf_cfg.first_k_dense_replace < hf_cfg.num_hidden_layers
        if moe and (hf_cfg.n_group != 1 or hf_cfg.topk_group != 1 or hf_cfg.routed_scaling_factor != 1.0):
            raise ConfigError(f"{where}: grouped routing (n_group={hf_cfg.n_group}, topk_group={hf_cfg.topk_group}) "
                              f"or routed_scaling_factor={hf_cfg.routed_scaling_factor} is not implemented here")
        return ModelConfig(
            attention="mla", q_lora_rank=hf_cfg.q_lora_rank or 0, kv_lora_rank=hf_cfg.kv_lora_rank,
            qk_nope_head_dim=hf_cfg.qk_nope_head_dim, qk_rope_head_dim=hf_cfg.qk_rope_head_dim,
            v_head_dim=hf_cfg.v_head_dim,
            n_routed_experts=hf_cfg.n_routed_experts if moe else 0,
            n_shared_experts=hf_cfg.n_shared_experts if moe else 0,
            top_k=hf_cfg.num_experts_per_tok if moe else 2, moe_ffn_hidden=hf_cfg.moe_intermediate_size,
            first_dense_layers=hf_cfg.first_k_dense_replace if moe else 0,
            router_scoring="sigmoid" if moe else "softmax", norm_topk_prob=bool(hf_cfg.norm_topk_prob),
            bias_balancing=moe,  # e_score_correction_bias is DeepSeek-V3's aux-loss-free balancing bias
            **common,
        )
    if mt == "mixtral":
        if getattr(hf_cfg, "sliding_window", None):
            raise ConfigError(f"{where}: sliding_window={hf_cfg.sliding_window}; we import full-attention Mixtral")
        return ModelConfig(n_kv_heads=hf_cfg.num_key_value_heads, head_dim=getattr(hf_cfg, "head_dim", None),
                           n_routed_experts=hf_cfg.num_local_experts, top_k=hf_cfg.num_experts_per_tok,
                           moe_ffn_hidden=hf_cfg.intermediate_size, router_scoring="softmax", norm_topk_prob=True,
                           **common)
    raise ConfigError(f"{where}: model_type={mt!r} is not importable; supported: llama, mixtral, deepseek_v3 "
                      "(Qwen2 has q/k/v biases and Qwen3 q/k norms, which our attention does not have)")


def _rope_fields(rp: dict[str, Any], where: str) -> dict[str, Any]:
    kind = rp.get("rope_type", "default")
    out: dict[str, Any] = {"rope_theta": float(rp.get("rope_theta", 10000.0))}
    if kind == "default":
        return out
    if kind == "linear":
        return {**out, "rope_scaling": "linear", "rope_factor": float(rp["factor"])}
    if kind == "yarn":
        return {**out, "rope_scaling": "yarn", "rope_factor": float(rp["factor"]),
                "rope_original_max_seq_len": int(rp["original_max_position_embeddings"]),
                "yarn_beta_fast": float(rp.get("beta_fast", 32.0)), "yarn_beta_slow": float(rp.get("beta_slow", 1.0))}
    raise ConfigError(f"{where}: rope_parameters.rope_type={kind!r} is not implemented (default, linear, yarn are)")


def _check_shapes(cfg: ModelConfig, hf_cfg: Any, where: str) -> None:
    for ours, theirs in (("vocab_size", "vocab_size"), ("d_model", "hidden_size"), ("n_layers", "num_hidden_layers"),
                         ("n_heads", "num_attention_heads")):
        if getattr(cfg, ours) != getattr(hf_cfg, theirs):
            raise ConfigError(f"{where}: {theirs}={getattr(hf_cfg, theirs)} disagrees with "
                              f"{OUR_CONFIG_KEY}.{ours}={getattr(cfg, ours)}")


def from_hf_state_dict(hf_sd: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """transformers' Llama / DeepSeek-V3 state dict → ours: the inverse of `hf_mapping.to_hf_state_dict`."""
    import torch

    from scratchlm.export.hf_mapping import to_hf_state_dict
    from scratchlm.model.transformer import Transformer

    with torch.device("meta"):
        skeleton = Transformer(cfg).state_dict()
    forward = to_hf_state_dict(skeleton, cfg)
    by_id = {id(t): k for k, t in skeleton.items()}
    out: dict[str, torch.Tensor] = {}
    for hf_key, t in forward.items():
        if hf_key not in hf_sd and hf_key.endswith("e_score_correction_bias"):  # Mixtral: no routing bias
            out[by_id[id(t)]] = torch.zeros(t.shape)
            continue
        if hf_key not in hf_sd:
            raise ValueError(f"transformers weights lack {hf_key!r} (is the config the one they were saved with?)")
        if id(t) in by_id:
            out[by_id[id(t)]] = hf_sd[hf_key]
        elif hf_key.endswith("mlp.experts.gate_up_proj"):  # stacked cat(w1, w3) per expert
            src = hf_key.removesuffix(".mlp.experts.gate_up_proj").replace("model.layers.", "layers.")
            inter = hf_sd[hf_key].shape[1] // 2
            for e in range(cfg.n_routed_experts):
                out[f"{src}.ffn.experts.{e}.w1.weight"] = hf_sd[hf_key][e, :inter]
                out[f"{src}.ffn.experts.{e}.w3.weight"] = hf_sd[hf_key][e, inter:]
        elif hf_key.endswith("mlp.experts.down_proj"):
            src = hf_key.removesuffix(".mlp.experts.down_proj").replace("model.layers.", "layers.")
            for e in range(cfg.n_routed_experts):
                out[f"{src}.ffn.experts.{e}.w2.weight"] = hf_sd[hf_key][e]
        else:  # pragma: no cover - to_hf_state_dict only stacks experts
            raise RuntimeError(f"from_hf_state_dict: no inverse for {hf_key}")
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """A run folder (config.toml, model.safetensors, tokenizer) from a transformers Llama / DeepSeek-V3 folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scratchlm.model.transformer import Transformer
    from scratchlm.runs import save_run
    from scratchlm.tokenizer.bpe import Tokenizer

    hf_dir, out = Path(hf_dir), Path(out)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json (not a transformers model folder)")
    if not (hf_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no tokenizer.json; a run needs a fast (tokenizers) tokenizer")
    tokenizer = Tokenizer.load(hf_dir)  # raises if the control tokens are not where our chat format needs them
    hf_cfg = AutoConfig.from_pretrained(hf_dir)
    if hf_cfg.model_type == "scratchlm":  # our registered class: the config is ours already
        from scratchlm.model.hf import ScratchLMForCausalLM

        wrapped = ScratchLMForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        model = wrapped.model
    else:
        mcfg = model_config_from_hf(hf_cfg, str(hf_dir / "config.json"))
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        model = Transformer(mcfg)
        missing, unexpected = model.load_state_dict(from_hf_state_dict(hf.state_dict(), mcfg), strict=False)
        missing = [k for k in missing if not (mcfg.tie_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"{hf_dir}: weights do not fit {mcfg}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(f"{hf_dir}: tokenizer has {tokenizer.vocab_size} ids but the model only "
                          f"{model.config.vocab_size} embedding rows")
    model.float()  # runs keep fp32 master weights; training casts per step
    cfg = Config(model=model.config)
    save_run(out, model, cfg, tokenizer_dir=None)
    tokenizer.save(out)
    return out
