"""Typed configuration: one dataclass per section, TOML presets, and `--set section.field=value` overrides.

Every field carries its type in the annotation; `Literal[...]` fields list their allowed values and
`_LIMITS` gives numeric bounds, so a wrong name or value is an error that names the field and what
is allowed. The resolved config is written into every run folder as `config.toml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from scratchlm.stages import STAGE_NAMES

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config field has a wrong name or value; the message names the field and what is allowed."""


@dataclass
class ModelConfig:
    """Every model variant is a field here; the code never checks a model's name."""

    name: str = "scratchlm"  # the model's answer to "who are you"
    vocab_size: int = 6400
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: Optional[int] = None  # None → n_heads (MHA); 1 → MQA; in between → GQA
    head_dim: Optional[int] = None  # None → d_model // n_heads
    ffn_hidden: Optional[int] = None  # None → 8/3·d_model rounded up to multiple_of (SwiGLU)
    multiple_of: int = 64
    norm: Literal["rmsnorm", "dyt"] = "rmsnorm"
    norm_eps: float = 1e-5
    dyt_alpha: float = 0.5  # initial α of Dynamic Tanh: y = γ·tanh(α·x) + β
    rope_theta: float = 1e6
    rope_scaling: Literal["none", "linear", "ntk", "yarn"] = "none"
    rope_factor: float = 1.0  # context extension factor for rope_scaling
    rope_original_max_seq_len: int = 2048  # context the model was trained at (YaRN)
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    max_seq_len: int = 512
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    sliding_window: int = 0  # 0 → full causal attention; W → attend to the last W tokens only
    attn_impl: Literal["sdpa", "reference"] = "sdpa"
    # attention = "mla": DeepSeek-V2 multi-head latent attention with decoupled RoPE
    attention: Literal["mha", "mla"] = "mha"
    q_lora_rank: int = 0  # 0 → queries are not compressed
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    # MoE: n_routed_experts = 0 → every layer is a dense SwiGLU
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    top_k: int = 2
    moe_ffn_hidden: Optional[int] = None  # None → ffn_hidden
    first_dense_layers: int = 0  # the first k layers stay dense (DeepSeek's first_k_dense_replace)
    router_scoring: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk_prob: bool = True  # renormalise the top-k router weights to sum to 1
    router_noise: float = 0.0  # noisy top-k gating: std of the noise added to logits in training
    aux_loss_coef: float = 0.01  # 0 disables the load-balancing auxiliary loss
    bias_balancing: bool = False  # DeepSeek-V3 aux-loss-free balancing (bias added for routing only)
    bias_update_rate: float = 0.001
    capacity_factor: float = 0.0  # 0 → no capacity limit; else tokens over capacity are dropped
    # DeepSeek-V3 multi-token prediction
    mtp_depth: int = 0
    mtp_loss_weight: float = 0.3

    def __post_init__(self) -> None:
        _validate(self, "model")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                    "set model.head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.n_kv_heads}"
            )
        if self.ffn_hidden is None:
            hidden = int(8 * self.d_model / 3)
            self.ffn_hidden = self.multiple_of * math.ceil(hidden / self.multiple_of)
        if self.moe_ffn_hidden is None:
            self.moe_ffn_hidden = self.ffn_hidden
        if self.n_routed_experts and not 1 <= self.top_k <= self.n_routed_experts:
            raise ConfigError(
                f"model.top_k={self.top_k} must be between 1 and model.n_routed_experts={self.n_routed_experts}"
            )
        if self.first_dense_layers > self.n_layers:
            raise ConfigError(
                f"model.first_dense_layers={self.first_dense_layers} exceeds model.n_layers={self.n_layers}"
            )
        if self.attention == "mla" and self.qk_rope_head_dim % 2:
            raise ConfigError(f"model.qk_rope_head_dim={self.qk_rope_head_dim} must be even (RoPE rotates pairs)")
        if self.attention == "mha" and self.head_dim % 2:
            raise ConfigError(f"model.head_dim={self.head_dim} must be even (RoPE rotates pairs)")

    @property
    def is_moe(self) -> bool:
        """True when some layers use a mixture of experts."""
        return self.n_routed_experts > 0

    def layer_is_moe(self, layer: int) -> bool:
        """Whether block `layer` (0-based) uses MoE instead of a dense SwiGLU."""
        return self.is_moe and layer >= self.first_dense_layers


@dataclass
class TrainConfig:
    """Everything the one training loop needs; objectives read the fields that concern them."""

    objective: Literal[STAGE_NAMES] = "pretrain"  # a stage registered in scratchlm/stages.py
    data: str = ""  # prepared shard folder (scratchlm prepare --out ...)
    val_data: str = ""  # optional separate validation shard folder
    batch_size: int = 16  # sequences per micro-batch per process
    seq_len: int = 256
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 100
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    wsd_decay_frac: float = 0.2  # WSD: fraction of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # adamw: AdamW on every parameter. muon: Muon (train/muon.py) on the hidden matrices (attention, MLP and expert
    # projections), AdamW with the settings above on the embedding, output heads, norms, router and LoRA factors.
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: float = 0.02  # Muon's peak lr; the schedule (warmup, decay) scales it as it scales train.lr
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5  # Newton–Schulz iterations per step
    muon_weight_decay: float = 0.0  # decoupled, applied as W ← W·(1 − lr·wd) at Muon's lr
    # Step scale per matrix shape [rows, cols] (torch.optim.Muon's adjust_lr_fn): original = √max(1, rows/cols)
    # (Keller Jordan's, lr ~0.02); match_rms_adamw = 0.2·√max(rows, cols) (Moonshot's: use AdamW's lr, ~1e-3).
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = "original"
    grad_clip: float = 1.0  # 0 disables clipping
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # torch.compile each Block's cache-free forward (every objective; masks, loss and decoding stay eager). The first
    # step compiles (the progress line says so); inductor's on-disk cache makes later runs of the same shapes fast.
    compile: bool = False
    # torch.profiler over profile_steps steps from step profile_from on (1-based; later than the compiling first
    # step), written to the run folder's profile/: trace.json (chrome://tracing, Perfetto), ops.txt and
    # breakdown.json (each step's milliseconds by part: matmuls, attention, compiled kernels, optimizer, the rest)
    profile_steps: int = 0  # 0: no profiling
    profile_from: int = 3  # counted from this run's first step (a resumed run: from where it resumed)
    seed: int = 1337
    log_every: int = 10
    eval_every: int = 100  # 0 disables periodic validation
    eval_batches: int = 20
    save_every: int = 200  # 0 → save only at the end
    keep_last: int = 3
    parallel: Literal["ddp", "fsdp"] = "ddp"  # used under torchrun
    deepspeed: str = ""  # path to a DeepSpeed ZeRO json config (optional extra)
    tensorboard: bool = False
    packing: bool = True  # SFT: pack whole conversations into each row (else one padded conversation per row)
    doc_mask: bool = True  # packed rows: tokens attend only within their own document, RoPE restarts per doc
    # SFT: this share of every batch's rows are pretraining windows (loss on all their tokens) from the prepared
    # pretrain shards in pretrain_mix_data, so the chat model keeps the corpus it was pretrained on.
    pretrain_mix: float = 0.0
    pretrain_mix_data: str = ""
    init_from: str = ""  # the run this one started from (set from --init-from): reference models are loaded from it

    def __post_init__(self) -> None:
        _validate(self, "train")


@dataclass
class LoRAConfig:
    """Low-rank adapters (model/lora.py) for any stage: rank 0 trains the whole model, rank ≥ 1 freezes it
    and trains adapters on the named linears only."""

    rank: int = 0
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    targets: str = "wq,wv"  # comma-separated linear names: wq wk wv wo (attention), w1 w2 w3 (SwiGLU), MLA's wq_a ...
    base: str = ""  # the run whose weights the adapters sit on (set from --init-from); a LoRA run stores only adapters

    def __post_init__(self) -> None:
        _validate(self, "lora")


@dataclass
class PreferenceConfig:
    """Preference training (train/preference.py, train/dpo.py): the loss variant and its coefficients."""

    loss_type: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"  # DPO (cDPO with label_smoothing), IPO, SimPO
    beta: float = 0.1
    label_smoothing: float = 0.0  # cDPO: the assumed share of flipped labels, in [0, 0.5)
    simpo_gamma: float = 0.5  # SimPO's target margin
    rpo_alpha: float = 0.0  # weight of the chosen reply's per-token NLL added to the preference loss (RPO)
    reward_margin: float = 0.0  # reward model: −log σ(r_chosen − r_rejected − margin)

    def __post_init__(self) -> None:
        _validate(self, "pref")


@dataclass
class RLConfig:
    """RL on sampled completions (train/grpo.py, train/ppo.py, train/rl_losses.py): rollouts, rewards, the losses."""

    num_generations: int = 4  # G completions per prompt (train.batch_size prompts per micro-batch → B·G rows)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    eps_low: float = 0.2  # the ratio is clipped to [1 − eps_low, 1 + eps_high] (DAPO's clip-higher: eps_high > eps_low)
    eps_high: float = 0.28
    beta: float = 0.0  # weight of the k3 KL to the reference (the --init-from run); 0 loads no reference
    scale_rewards: bool = True  # divide advantages by the group's std (GRPO); false = Dr. GRPO
    loss_agg: Literal["grpo", "dapo", "dr_grpo", "cispo"] = "dapo"
    reward_funcs: str = "answer,format"  # comma-separated names from train/rule_rewards.py
    reward_weights: str = "1.0,0.1"  # one weight per reward function
    # Drop groups whose rewards are all equal (no signal): half of DAPO's dynamic sampling, which also draws new
    # prompts until the batch is full again; here the batch shrinks instead.
    dynamic_sampling: bool = False
    num_iterations: int = 1  # μ: optimizer steps on each rollout batch, old log-probs kept (TRL's num_ppo_epochs)
    # Agentic RL (`scratchlm train agent`, agent/rl.py): replies per agent run (each may call tools; the last may not),
    # and the built-in tools listed and run (comma-separated: calculator, date). max_new_tokens is per reply.
    max_turns: int = 3
    tools: str = "calculator,date"
    # PPO (train/ppo.py; TRL's PPOConfig names). The clipped ratio uses eps_low / eps_high (TRL's cliprange: 0.2 both).
    reward_model: str = ""  # a `scratchlm train reward` run scoring prompt + completion; empty = reward_funcs
    kl_coef: float = 0.05  # β of the per-token −β·(log π − log π_ref) folded into the rewards; 0 loads no reference
    gamma: float = 1.0  # discount over completion tokens in GAE
    lam: float = 0.95  # GAE's λ: 1 = Monte-Carlo returns minus values, 0 = one-step TD errors
    vf_coef: float = 0.1  # weight of the value loss in loss = policy loss + vf_coef · value loss
    # The critic's lr as a multiple of train.lr. AdamW's step size does not follow vf_coef, so only this lets the critic
    # learn faster than the policy (verl and OpenRLHF train it at 10-20x the actor's lr).
    critic_lr_scale: float = 1.0
    cliprange_value: float = 0.2  # the new value is clipped to the rollout's value ± this in the value loss
    missing_eos_penalty: float = 0.0  # subtracted from the score of a completion cut at max_new_tokens (0 = off)
    # Whiten each rollout batch's scores (mean 0, std 1) before the KL shaping, and start the critic's head at zero.
    # A reward model's raw scores have an arbitrary offset and scale (the demo's: 6-20): the value loss on them dwarfed
    # the policy loss, and the one gradient-norm clip then shrank the policy's update 10-70x (measured).
    whiten_scores: bool = False

    def __post_init__(self) -> None:
        _validate(self, "rl")


@dataclass
class DistillConfig:
    """Logit distillation (train/distill.py): a frozen teacher run's softened distribution taught to the student."""

    teacher: str = ""  # the teacher run folder (same tokenizer; any size)
    temperature: float = 2.0  # T: both distributions softened by T, the KL scaled by T² (Hinton et al.)
    alpha: float = 0.5  # loss = alpha · T² · KL + (1 − alpha) · cross-entropy on the data's targets
    kl: Literal["forward", "reverse"] = "forward"  # KL(teacher ‖ student) covers modes; reverse seeks one

    def __post_init__(self) -> None:
        _validate(self, "distill")


@dataclass
class QuantConfig:
    """A quantized run (`scratchlm quantize`, model/quant.py): the loader builds quantized linears from these fields."""

    # "none": a float run; int8: weight-only, per-output-channel scales; smoothquant: W8A8 (int8 activations per
    # token) after SmoothQuant's scale migration
    # awq: group-wise int4 weights after AWQ's activation-aware scales
    method: Literal["none", "int8", "smoothquant", "awq"] = "none"
    source: str = ""  # the float run it was quantized from
    alpha: float = 0.0  # smoothquant: the migration strength used; awq: the mean of the α its search chose
    calib_tokens: int = 0  # tokens of calibration text the activation statistics came from (0: none needed)
    group_size: int = 0  # awq: int4 weights share one scale per this many consecutive weights of a row

    def __post_init__(self) -> None:
        _validate(self, "quant")


@dataclass
class Config:
    """A whole run: the model, how to train it, optional adapters, and (for a quantized run) how it was quantized."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    pref: PreferenceConfig = field(default_factory=PreferenceConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (None values dropped: TOML has no null)."""
        return {
            f.name: {k: v for k, v in dataclasses.asdict(getattr(self, f.name)).items() if v is not None}
            for f in fields(self)
        }

    def save(self, path: str | Path) -> None:
        """Write the resolved config as TOML (atomically)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(tomli_w.dumps(self.to_dict()), encoding="utf-8")
        tmp.replace(path)


# Numeric bounds: (min, max) inclusive, None = unbounded. Named here so errors can quote them.
_LIMITS: dict[str, tuple[float | None, float | None]] = {
    "model.vocab_size": (1, 2**32 - 1),
    "model.d_model": (1, None),
    "model.n_layers": (1, None),
    "model.n_heads": (1, None),
    "model.n_kv_heads": (1, None),
    "model.head_dim": (1, None),
    "model.ffn_hidden": (1, None),
    "model.multiple_of": (1, None),
    "model.norm_eps": (0, None),
    "model.rope_theta": (1, None),
    "model.rope_factor": (1, None),
    "model.rope_original_max_seq_len": (1, None),
    "model.max_seq_len": (1, None),
    "model.dropout": (0, 1),
    "model.init_std": (0, None),
    "model.sliding_window": (0, None),
    "model.q_lora_rank": (0, None),
    "model.kv_lora_rank": (1, None),
    "model.qk_nope_head_dim": (1, None),
    "model.qk_rope_head_dim": (2, None),
    "model.v_head_dim": (1, None),
    "model.n_routed_experts": (0, None),
    "model.n_shared_experts": (0, None),
    "model.top_k": (1, None),
    "model.first_dense_layers": (0, None),
    "model.router_noise": (0, None),
    "model.aux_loss_coef": (0, None),
    "model.bias_update_rate": (0, None),
    "model.capacity_factor": (0, None),
    "model.mtp_depth": (0, None),
    "model.mtp_loss_weight": (0, None),
    "train.batch_size": (1, None),
    "train.seq_len": (1, None),
    "train.grad_accum": (1, None),
    "train.max_steps": (1, None),
    "train.lr": (0, None),
    "train.min_lr_ratio": (0, 1),
    "train.warmup_steps": (0, None),
    "train.wsd_decay_frac": (0, 1),
    "train.pretrain_mix": (0, 0.9),
    "train.weight_decay": (0, None),
    "train.beta1": (0, 1),
    "train.beta2": (0, 1),
    "train.eps": (0, None),
    "train.muon_lr": (0, None),
    "train.muon_momentum": (0, 0.9999),
    "train.muon_ns_steps": (1, 99),
    "train.muon_weight_decay": (0, None),
    "train.grad_clip": (0, None),
    "train.profile_steps": (0, None),
    "train.profile_from": (2, None),
    "train.log_every": (1, None),
    "train.eval_every": (0, None),
    "train.eval_batches": (1, None),
    "train.save_every": (0, None),
    "train.keep_last": (1, None),
    "pref.beta": (0, None),
    "pref.label_smoothing": (0, 0.49),
    "pref.rpo_alpha": (0, None),
    "rl.num_generations": (1, None),
    "rl.max_new_tokens": (1, None),
    "rl.temperature": (0, None),
    "rl.top_p": (1e-6, 1),
    "rl.eps_low": (0, 1),
    "rl.eps_high": (0, None),
    "rl.beta": (0, None),
    "rl.num_iterations": (1, None),
    "rl.max_turns": (1, 16),
    "rl.kl_coef": (0, None),
    "rl.gamma": (0, 1),
    "rl.lam": (0, 1),
    "rl.vf_coef": (0, None),
    "rl.critic_lr_scale": (1e-6, None),
    "rl.cliprange_value": (0, None),
    "rl.missing_eos_penalty": (0, None),
    "distill.temperature": (1e-3, None),
    "distill.alpha": (0, 1),
    "lora.rank": (0, None),
    "lora.alpha": (0, None),
    "lora.dropout": (0, 1),
    "quant.alpha": (0, 1),
    "quant.calib_tokens": (0, None),
    "quant.group_size": (0, None),
}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and for CLI strings, convert) `value` against annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}={value!r} must be a boolean (true or false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}={value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}={value!r} must be a string")
    return value


def _validate(obj: Any, section: str) -> None:
    """Coerce and range-check every field of a section dataclass in place."""
    for name, tp in _field_types(type(obj)).items():
        where = f"{section}.{name}"
        value = _coerce(getattr(obj, name), tp, where)
        object.__setattr__(obj, name, value)
        lo, hi = _LIMITS.get(where, (None, None))
        if value is not None and not isinstance(value, (bool, str)):
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ConfigError(f"{where}={value!r} is out of range {bounds}")


def _unknown(name: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown field {where}{name!r}{hint}; allowed: {', '.join(sorted(known))}")


def _section_classes() -> dict[str, type]:
    return {f.name: _field_types(Config)[f.name] for f in fields(Config)}


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a validated Config from nested dicts; unknown sections/fields are errors."""
    sections = _section_classes()
    kwargs: dict[str, Any] = {}
    for sec, values in data.items():
        if sec not in sections:
            raise _unknown(sec, list(sections), f"section in {source}: ")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{sec}] must be a table of fields")
        cls = sections[sec]
        known = [f.name for f in fields(cls)]
        for k in values:
            if k not in known:
                raise _unknown(k, known, f"{sec}.")
        kwargs[sec] = cls(**values)
    return Config(**kwargs)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """Turn ["model.n_layers=4", ...] into {"model": {"n_layers": "4"}}; values are coerced later."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.field=value, e.g. model.n_layers=4")
        key, value = item.split("=", 1)
        sec, name = key.strip().split(".", 1)
        out.setdefault(sec, {})[name] = value.strip()
    return out


def resolve_preset(name_or_path: str | Path) -> Path:
    """A preset name (`tiny`) or a TOML path → the file to read."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    candidate = PRESET_DIR / f"{name_or_path}.toml"
    if candidate.exists():
        return candidate
    if p.exists():
        return p
    raise ConfigError(f"no config file or preset named {str(name_or_path)!r}; presets: {', '.join(list_presets())}")


def list_presets() -> list[str]:
    """Names of the presets shipped in the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for sec, values in extra.items():
        if isinstance(values, dict) and isinstance(out.get(sec), dict):
            out[sec].update(values)
        else:
            out[sec] = values
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a syntax error names the file and line."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_config(
    preset: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Preset file (or name), then `base` dict, then `--set` overrides, validated into a Config."""
    data: dict[str, Any] = {}
    source = "defaults"
    if preset is not None:
        path = resolve_preset(preset)
        data = read_toml(path)
        source = str(path)
    if base:
        data = _merge(data, base)
    if overrides:
        data = _merge(data, parse_overrides(overrides))
    return config_from_dict(data, source)


# Placeholder fields that older runs saved before their real sections existed: dropped when such a run is read
# (a user's own TOML or --set naming them is still an error).
RETIRED_FIELDS = {"train": ("lora_rank", "lora_alpha", "lora_targets", "beta", "num_generations", "max_new_tokens")}


def upgrade_saved_config(data: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config dict without the retired placeholder fields (in place; returned for chaining)."""
    for sec, names in RETIRED_FIELDS.items():
        for name in names:
            data.get(sec, {}).pop(name, None)
    return data


def load_run_config(run_dir: str | Path) -> Config:
    """The config saved in a run folder."""
    path = Path(run_dir) / "config.toml"
    if not path.exists():
        raise ConfigError(f"{run_dir}: not a run folder (no config.toml)")
    return config_from_dict(upgrade_saved_config(read_toml(path)), str(path))
