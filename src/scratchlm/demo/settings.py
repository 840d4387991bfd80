"""What the demo trains: `DemoSettings`, typed, with its values read from configs/demo/settings.toml ([demo] the
default, [quick] what `--quick` changes); the demo's steps in order; the `--set` overrides of its stages."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from scratchlm.config import PRESET_DIR, read_toml

SETTINGS_FILE = PRESET_DIR / "demo" / "settings.toml"

# The demo's steps, in order: training stages of the registry (scratchlm.stages.STAGES) plus "lora" (an adapter
# trained by the sft objective), "rag" (no training) and "tools" (tool-use SFT by the sft objective); `--stages all`
# runs every one.
DEMO_STEPS: tuple[str, ...] = ("pretrain", "sft", "lora", "reward", "dpo", "grpo", "ppo", "distill", "rag", "tools")


def _typed(value: Any, tp: Any) -> Any:
    """A TOML value as the field type `tp` asks (TOML has arrays, not tuples)."""
    origin = get_origin(tp)
    if origin is tuple:
        return tuple(value)
    if origin is dict:
        return {k: _typed(v, get_args(tp)[1]) for k, v in value.items()}
    return value


def _read_section(cls: type, section: str, path: Path = SETTINGS_FILE) -> dict[str, Any]:
    """Section `section` of the settings file as {field: typed value}; a key that is no field is an error."""
    values = read_toml(path).get(section)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: no [{section}] table")
    hints = get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{path} [{section}]: unknown setting(s) {', '.join(unknown)}; "
                         f"DemoSettings has {', '.join(hints)}")
    return {k: _typed(v, hints[k]) for k, v in values.items()}


def _defaults_from_file(cls: type) -> type:
    """Give every annotated field of `cls` its default from [demo] (lists and dicts as fresh copies per instance)."""
    values = _read_section(cls, "demo")
    missing = [k for k in get_type_hints(cls) if k not in values]
    if missing:
        raise ValueError(f"{SETTINGS_FILE} [demo]: missing setting(s) {', '.join(missing)}")
    for name, value in values.items():
        setattr(cls, name, field(default_factory=partial(copy.deepcopy, value))
                if isinstance(value, (list, dict)) else value)
    return cls


@dataclass
@_defaults_from_file
class DemoSettings:
    """What the demo trains; the defaults (configs/demo/settings.toml [demo]) fit ~15 minutes on 2 CPU cores."""

    vocab_size: int
    preset: str
    model: list[str]  # extra --set model.* overrides
    train: list[str]  # extra --set train.* overrides of pretrain and SFT (e.g. train.optimizer=muon, train.compile=true)
    pretrain_train: list[str]  # extra --set train.* overrides of pretraining only (after `train`)
    sft_train: list[str]  # extra --set train.* overrides of SFT only (after `train`)
    pretrain_steps: int
    pretrain_batch: int
    pretrain_seq_len: int
    pretrain_lr: float
    sft_steps: int
    sft_batch: int
    sft_seq_len: int
    sft_lr: float
    sft_schedule: str
    sft_decay_frac: float
    sft_packing: bool
    sft_pretrain_mix: float
    sft_mixed_turns: float  # share of SFT chats given 1-3 more turns of any task (multi-turn conversations)
    sft_think_off: float  # share of SFT chats written thinking off (the template's think-off form)
    sft_conversations_by_task: dict[str, float]  # task -> the share that replaces both of the above for that task
    synth_sizes: dict[str, tuple[int, ...]]  # task: [train, val (dev), test]; test defaults to val's size
    stages: list[str]
    lora_name: str
    lora_steps: int
    lora_sizes: dict[str, tuple[int, ...]]
    lora_sets: list[str]
    pref_sizes: dict[str, tuple[int, ...]]
    reward_steps: int
    reward_sets: list[str]
    dpo_steps: int
    dpo_sets: list[str]
    eval_pairs: int
    grpo_task: str
    grpo_prompts: int
    grpo_cold_sizes: dict[str, tuple[int, ...]]
    grpo_cold_steps: int
    grpo_cold_every: int
    grpo_cold_target: float
    grpo_cold_dev: int
    grpo_cold_sets: list[str]
    grpo_replay: dict[str, int]
    grpo_steps: int
    grpo_sets: list[str]
    ppo_tasks: tuple[str, ...]
    ppo_steps: int
    ppo_sets: list[str]
    ppo_eval_samples: int
    ppo_init: str  # "dpo" (the chain SFT -> DPO -> PPO when DPO runs) or "sft"
    distill_student: list[str]
    distill_steps: int
    distill_sets: list[str]
    rag_docs: int
    rag_embedder: str
    tool_sizes: tuple[int, ...]  # calculator/direct tool chats added to SFT: [train, val, test]; all 0 = off
    tool_names: list[str]  # the tools every tool chat lists (and the agent gets when measured)
    tool_direct_share: float  # share of the tool chats answered without a call
    tool_seq_len: int  # SFT's row length when tool chats are on (a tool chat must fit)
    tool_batch: int  # SFT's batch size when tool chats are on
    tool_eval: int  # held-out problems of tool_use_accuracy (agent with the tools vs the model alone)
    tools_stage_sizes: tuple[int, ...]  # the tools stage's tool chats: [train, val]
    tools_stage_questions: tuple[int, ...]  # questions per tool chat: [fewest, most], each with its own call
    tools_stage_calc_tasks: tuple[str, ...]  # the arithmetic tasks (`<op><digits>`, 4+ digits) of its calculator chats
    tools_stage_steps: int
    tools_stage_seq_len: int  # its row length: one tool chat (with the tools' system turn) must fit
    tools_stage_sets: list[str]
    report_eval: bool
    lanes: int  # 2: the second_lane steps run in a second process beside the other stages (CPU only); 1: in turn
    second_lane: list[str]  # the steps after SFT in the second lane; ppo with reward (and dpo when ppo_init = "dpo")
    eval_split: str  # "test": what the demo reports (never tuned on); "val": the dev split, to choose settings on
    eval_per_task: int
    conversation_per_task: int  # questions per task asked as a third turn and with thinking off (eval/conversation)
    max_new_tokens: int
    seed: int


def quick_settings() -> DemoSettings:
    """A ~1-minute version for tests: a small model, few steps, few eval prompts ([quick] of the settings file)."""
    return DemoSettings(**_read_section(DemoSettings, "quick"))


def override_settings(s: DemoSettings, items: list[str]) -> DemoSettings:
    """Apply `--setting KEY=VALUE` overrides (VALUE in TOML syntax) to `s`; a bad key or type names it."""
    import tomllib

    hints = get_type_hints(DemoSettings)
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in hints:
            raise SystemExit(f"scratchlm demo --setting {item!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(hints)}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"scratchlm demo --setting {key}: {raw!r} is not a TOML value ({e}); "
                             "strings need quotes, e.g. preset=\"tiny\"") from None
        old = getattr(s, key)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(old) and not (isinstance(old, tuple) and isinstance(value, list)):
            raise SystemExit(f"scratchlm demo --setting {key}: expected a {type(old).__name__} like {old!r}, "
                             f"got {value!r}")
        setattr(s, key, _typed(value, hints[key]))
    return s


def parse_stages(text: str) -> list[str]:
    """"pretrain,sft,lora" or "all" → the list of demo steps; the first two are always needed (later ones start
    from SFT)."""
    names = list(DEMO_STEPS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in DEMO_STEPS]
    if unknown:
        raise SystemExit(f"scratchlm demo --stages: unknown stage(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(DEMO_STEPS)} or all")
    if names[:2] != ["pretrain", "sft"] or names != [n for n in DEMO_STEPS if n in names]:
        raise SystemExit(f"scratchlm demo --stages {text}: start with pretrain,sft and keep the order "
                         f"{','.join(DEMO_STEPS)}")
    if "ppo" in names and "reward" not in names:
        raise SystemExit(f"scratchlm demo --stages {text}: ppo learns from the reward stage's model; add reward")
    return names


def tools_on(s: DemoSettings) -> bool:
    """Whether the demo adds tool-use chats to its SFT data (and measures tool use)."""
    return bool(s.tool_sizes) and s.tool_sizes[0] > 0


def stage_sets(s: DemoSettings, stage: str, with_train: bool = True) -> list[str]:
    """The `--set` overrides that train demo stage "pretrain" or "sft" with settings `s` (and its `train` list, then
    the stage's own `pretrain_train` / `sft_train`, unless `with_train` is False)."""
    if stage == "pretrain":
        steps, batch, seq_len, lr = s.pretrain_steps, s.pretrain_batch, s.pretrain_seq_len, s.pretrain_lr
        own = s.pretrain_train
        # Plain causal windows across document boundaries, like the perplexity windows of the evaluation. With
        # the document mask the model never sees such windows: val ppl 291 vs 229 measured (add2 after SFT was
        # 0.755, inside the large run-to-run spread of 0.575-0.92 without it).
        extra = ["train.doc_mask=false"]
    elif stage == "sft":
        steps, batch, seq_len, lr = s.sft_steps, s.sft_batch, s.sft_seq_len, s.sft_lr
        own = s.sft_train
        if tools_on(s):  # a tool chat is ~270 tokens, its tools' system turn alone ~180: rows must hold one
            batch, seq_len = s.tool_batch, s.tool_seq_len
        extra = [f"train.packing={str(s.sft_packing).lower()}", f"train.schedule={s.sft_schedule}",
                 f"train.wsd_decay_frac={s.sft_decay_frac}", f"train.pretrain_mix={s.sft_pretrain_mix}"]
    else:
        raise ValueError(f"stage_sets: stage must be 'pretrain' or 'sft', got {stage!r}")
    # RoPE has no learnt positions: a longer max_seq_len only lengthens its tables (pretrain too, so that the SFT
    # model's config is the pretrained one's), and leaves room for the agent's prompt plus its reply
    longer = [f"model.max_seq_len={2 * s.tool_seq_len}"] if tools_on(s) else []
    return [f"model.vocab_size={s.vocab_size}", *s.model, *longer, f"train.max_steps={steps}", f"train.batch_size={batch}",
            f"train.seq_len={seq_len}", f"train.lr={lr}", f"train.warmup_steps={max(1, steps // 20)}",
            f"train.eval_every={max(1, steps // 5)}", "train.eval_batches=10", f"train.save_every={steps}",
            "train.keep_last=1", f"train.log_every={max(1, steps // 100)}", f"train.seed={s.seed}", *extra, *((*s.train, *own) if with_train else ())]


def post_sft_sets(s: DemoSettings, steps: int, extra: list[str]) -> list[str]:
    """The `--set` overrides of a stage that starts from the SFT run (lora, reward, dpo): SFT's shape and
    sequence length, `steps` steps with one save and one validation at the end, then the stage's own `extra`."""
    # s.train (optimizer, compile) is for the from-scratch trainings; these stages keep their own recipe
    return [*stage_sets(s, "sft", with_train=False), f"train.max_steps={steps}", "train.pretrain_mix=0",
            f"train.save_every={steps}", f"train.warmup_steps={max(1, steps // 20)}", f"train.eval_every={steps}",
            *extra]
