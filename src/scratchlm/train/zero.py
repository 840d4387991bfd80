"""DeepSpeed ZeRO stages 1-2, the third way to run the loop on many processes (`--set train.deepspeed=FILE`).

The loop keeps what it owns everywhere else: AdamW and its parameter groups, the lr schedule, the batch
size, accumulation and clipping threshold, the data and the checkpoints. The JSON file adds what only
DeepSpeed decides: the ZeRO stage, bucket sizes, communication overlap. Fields that train.* also sets may
be "auto" (filled in from train.*) or equal to it; anything else is an error naming both values.

ZeRO-1/2 shard the optimizer state (and ZeRO-2 the gradients) but keep every weight whole on every
process, so model.safetensors is written as usual. Weights stay fp32 and bf16 comes from the loop's
autocast, exactly as under DDP. The optimizer state is gathered into the same
name-keyed AdamW state dict the DDP/FSDP2 path saves, so a ZeRO checkpoint resumes on any number of
processes, with or without DeepSpeed, and a plain checkpoint resumes under ZeRO. ZeRO-3 (sharded
weights) is left to FSDP2 (`train.parallel=fsdp`).

`DeepSpeedBackend` is how the loop sees all this: the same `Backend` interface as one process, DDP and FSDP2
(train/distributed.py). DeepSpeed's wrapped model (its `DeepSpeedEngine`) owns backward, clipping and the
optimizer step; here it is called `ds_model`, what it is to the loop.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from scratchlm.config import PRESET_DIR, Config, ConfigError
from scratchlm.train.distributed import Backend, DistInfo, full_optimizer_state, load_optimizer_state

# Sections the loop owns: DeepSpeed's own optimizer or lr scheduler would fight train.lr and the schedule.
_OWNED_SECTIONS = ("optimizer", "scheduler", "fp16")
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def find_config(path: str) -> Path:
    """A DeepSpeed JSON by path, or by name among the shipped ones (e.g. `deepspeed_zero2`)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = PRESET_DIR / (p.name if p.suffix == ".json" else f"{p.name}.json")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(q.stem for q in PRESET_DIR.glob("*.json")))
    raise FileNotFoundError(f"train.deepspeed={path!r}: no such DeepSpeed config file (shipped: {names})")


def require_deepspeed(path: str) -> Path:
    """The config file to use; clear errors when DeepSpeed or the file is missing."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError(f"train.deepspeed={path!r} needs DeepSpeed, which is not installed: "
                          f"pip install 'scratchlm[deepspeed]' (or leave train.deepspeed empty for DDP/FSDP2)") from None
    return find_config(path)


def resolve_config(path: str | Path, cfg: Config, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config: the JSON file with the fields train.* owns filled in (and checked)."""
    try:
        ds = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: a DeepSpeed config is a JSON object, got {type(ds).__name__}")
    tc = cfg.train
    for section in _OWNED_SECTIONS:
        if section in ds:
            hint = "set train.dtype=bfloat16 instead" if section == "fp16" else "the loop's AdamW and train.lr/schedule apply"
            raise ConfigError(f"{path}: remove the {section!r} section ({hint})")
    owned = {
        "train_micro_batch_size_per_gpu": (tc.batch_size, "train.batch_size"),
        "gradient_accumulation_steps": (tc.grad_accum, "train.grad_accum"),
        "train_batch_size": (tc.batch_size * tc.grad_accum * world_size, "train.batch_size × train.grad_accum × processes"),
        "gradient_clipping": (tc.grad_clip, "train.grad_clip"),
    }
    for key, (value, source) in owned.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError(f"{path}: {key}={given!r} disagrees with {source}={value!r}; "
                              f"write \"auto\" (or drop the field) to take it from scratchlm's config")
        ds[key] = value
    # Weights stay fp32 as in DDP; bf16 comes from the loop's autocast (train.dtype), not DeepSpeed's bf16 mode.
    bf16 = ds.get("bf16", {}).get("enabled", "auto")
    if bf16 not in ("auto", False):
        raise ConfigError(f"{path}: bf16.enabled={bf16!r}; set it to \"auto\" or false: mixed precision "
                          f"comes from train.dtype (now {tc.dtype!r}, autocast over fp32 weights)")
    ds["bf16"] = dict(ds.get("bf16", {}), enabled=False)
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ConfigError(f"{path}: zero_optimization.stage={stage!r}; scratchlm runs ZeRO stages 0-2 "
                          f"(for sharded weights, ZeRO-3's job, use --set train.parallel=fsdp)")
    ds.setdefault("steps_per_print", 10**9)  # our metrics.jsonl and progress bar report the steps
    return ds


def _ensure_process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group even on one process (no torchrun): start a local one."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:  # a free port on this machine
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def initialize(raw: nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict[str, Any], info: DistInfo) -> Any:
    """The model and our AdamW wrapped by DeepSpeed (its DeepSpeedEngine); its optimizer keeps our param groups."""
    import deepspeed

    _ensure_process_group(info.device)
    ds_model, _, _, _ = deepspeed.initialize(model=raw, optimizer=optimizer, config=ds_config)
    return ds_model


def _zero_optimizer(ds_model: Any) -> Any:
    opt = ds_model.optimizer
    if not hasattr(opt, "single_partition_of_fp32_groups") or not hasattr(opt, "optimizer"):
        raise ConfigError(f"DeepSpeed {getattr(__import__('deepspeed'), '__version__', '?')}: its ZeRO optimizer "
                          f"({type(opt).__name__}) has an unknown layout; scratchlm was tested with 0.19")
    return opt


def _link_state(zopt: Any) -> None:
    """(Re)point every weight's fragment at its slice of AdamW's state. DeepSpeed links them once, right after
    the first group's first step, when the other groups' state does not exist yet."""
    zopt._hp_optimizer_states_linked = False
    zopt._lazy_init_hp_params_optimizer_state()


def _scratch_adamw(raw: nn.Module, ds_model: Any) -> torch.optim.Optimizer:
    """A plain AdamW over the raw parameters with the ZeRO optimizer's groups (same order and hyperparameters)."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in ds_model.optimizer.param_groups]
    by_id = {id(p): p for p in raw.parameters()}
    for g, params in zip(groups, ds_model.optimizer.bit16_groups):
        g["params"] = [by_id[id(p)] for p in params]
    return torch.optim.AdamW(groups)


def gather_optimizer_state(raw: nn.Module, ds_model: Any) -> dict[str, Any]:
    """The sharded ZeRO AdamW state as the full, name-keyed state dict of the DDP/FSDP path (a collective)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    zopt = _zero_optimizer(ds_model)
    base_state = zopt.optimizer.state
    flat = zopt.single_partition_of_fp32_groups
    plain = _scratch_adamw(raw, ds_model)
    if any(p in base_state for p in flat):  # after the first step; before it AdamW holds no state yet
        _link_state(zopt)
        step = next(base_state[p]["step"] for p in flat if p in base_state)
        for group in plain.param_groups:
            for p in group["params"]:
                plain.state[p] = {"step": step.detach().clone().cpu().float(),
                                  **{k: safe_get_full_optimizer_state(p, k).detach().cpu() for k in ADAM_KEYS}}
    return full_optimizer_state(raw, plain)


def scatter_optimizer_state(raw: nn.Module, ds_model: Any, state: dict[str, Any]) -> None:
    """Load a full, name-keyed AdamW state dict (from any checkpoint) into the ZeRO optimizer's shards."""
    from deepspeed.utils import safe_set_full_optimizer_state

    zopt = _zero_optimizer(ds_model)
    plain = _scratch_adamw(raw, ds_model)
    load_optimizer_state(raw, plain, state)
    if not plain.state:
        return
    step = next(iter(plain.state.values()))["step"]
    for p in zopt.single_partition_of_fp32_groups:  # create AdamW's per-partition state, then fill it
        zopt.optimizer.state[p] = {"step": step.detach().clone().float(),
                                   **{k: torch.zeros_like(p) for k in ADAM_KEYS}}
    _link_state(zopt)
    for p, st in plain.state.items():
        for k in ADAM_KEYS:
            safe_set_full_optimizer_state(p, st[k].to(p.device), k)


class DeepSpeedBackend(Backend):
    """DeepSpeed ZeRO-1/2 behind the loop's Backend interface: `ds_model` steps (after clipping) at its own
    accumulation boundary, inside the last micro-batch's backward."""

    def __init__(self, info: DistInfo, ds_config: dict[str, Any]) -> None:
        super().__init__(info)
        self.ds_config = ds_config
        self.ds_model: Any = None  # DeepSpeed's wrapped model (a DeepSpeedEngine)

    def wrap(self, raw: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> nn.Module:
        self.raw = raw
        self.model = self.ds_model = initialize(raw, make_optimizer(raw), self.ds_config, self.info)
        self.optimizer = self.ds_model.optimizer
        return self.model

    def backward(self, loss: torch.Tensor, n_micro: int) -> None:
        self.ds_model.backward(loss * n_micro)  # it divides by the accumulation steps itself
        self.ds_model.step()  # steps the optimizer (after clipping) only at the last micro-batch

    def step(self, grad_clip: float) -> Any:
        return self.ds_model.get_global_grad_norm()  # clipped and stepped inside the last backward

    def optimizer_state(self) -> dict[str, Any]:
        return gather_optimizer_state(self.raw, self.ds_model)  # collective: gathers the ZeRO shards

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        scatter_optimizer_state(self.raw, self.ds_model, state)
