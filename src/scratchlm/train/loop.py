"""THE training loop. It does not know the model or the stage: an Objective turns data into a loss.

The loop owns: device and dtype (scratchlm.device), the backend (one process, DDP, FSDP2 or DeepSpeed ZeRO behind
one interface: train/distributed.py, train/zero.py), the optimizer (AdamW with decay/no-decay groups, or Muon on the
hidden matrices + AdamW: train/muon.py), the lr schedule (train/schedule.py), gradient accumulation, clipping, optional torch.compile, seeds, validation, metrics.jsonl,
loss.png and tensorboard (train/metrics_log.py), the progress bar, checkpoints (train/checkpoint.py), exact
resume, SIGINT/SIGTERM, and stopping on a NaN loss.
"""

from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scratchlm.config import Config, ConfigError, load_run_config
from scratchlm.device import autocast, pick_device, pick_dtype
from scratchlm.runs import load_weights, refuse_quantized, tied_aliases
from scratchlm.train import distributed as D
from scratchlm.train import zero
from scratchlm.train.batches import to_device
from scratchlm.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, restore_rng, save_checkpoint
from scratchlm.train.metrics_log import MetricsLog, plot_metrics, rss_mb
from scratchlm.train.muon import MuonAdamW, muon_param_names
from scratchlm.train.objectives import Objective
from scratchlm.train.profiling import FORWARD_BACKWARD, OPTIMIZER_STEP, maybe_profiler, region
from scratchlm.train.schedule import lr_at


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the run stopped without saving over good checkpoints."""


@dataclass
class TrainResult:
    """What a call to `train` did."""

    out_dir: Path
    step: int  # optimizer steps completed in total (including before a resume)
    status: str  # "done" | "interrupted" | "stopped" (stop_at_step reached)
    losses: list[float] = field(default_factory=list)  # mean train loss of each step run in this call
    val: list[tuple[int, float]] = field(default_factory=list)  # (step, val loss)
    tokens: int = 0  # tokens processed in total (all processes)
    seconds: float = 0.0  # wall time of this call's steps


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (train.optimizer=adamw) or Muon + AdamW (muon; train/muon.py). AdamW: weight decay on matrices
    (dim ≥ 2: linears and the embedding, which is tied to the output head), none on vectors (norm gains, DyT α/β,
    biases) — decaying a norm gain only pulls it towards 0, which fights the normalisation."""
    tc = cfg.train
    # A module may train some parameters at a multiple of the schedule's lr (PPO's critic): `lr_scale_of(name)`.
    scale_of = getattr(model, "lr_scale_of", None)
    muon_names = set(muon_param_names(model)) if tc.optimizer == "muon" else set()
    buckets: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}  # as checkpoints hold
    muon_buckets: dict[float, list[nn.Parameter]] = {1.0: []} if muon_names else {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = float(scale_of(name)) if scale_of is not None else 1.0
            if name in muon_names:
                muon_buckets.setdefault(scale, []).append(p)
            else:
                buckets.setdefault((p.dim() >= 2, scale), []).append(p)
    groups = [{"params": ps, "weight_decay": tc.weight_decay if decay else 0.0, "lr_scale": scale}
              for (decay, scale), ps in sorted(buckets.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]
    is_dtensor = any(type(p).__name__ == "DTensor" for g in groups for p in g["params"])
    # fused AdamW is one kernel over all tensors (CPU and CUDA); DTensors (FSDP) use the default
    fused = device.type in ("cpu", "cuda") and not is_dtensor
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps, fused=fused)
    for g in groups:
        g.update(use_muon=False, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)
    # Muon's lr follows the same schedule: the loop sets every group's lr to schedule(step) · lr_scale.
    muon_scale = tc.muon_lr / tc.lr if tc.lr > 0 else 0.0
    muon_groups = [{"params": ps, "use_muon": True, "lr": tc.muon_lr * scale, "lr_scale": muon_scale * scale,
                    "weight_decay": tc.muon_weight_decay, "momentum": tc.muon_momentum,
                    "nesterov": tc.muon_nesterov, "ns_steps": tc.muon_ns_steps, "adjust": tc.muon_adjust_lr}
                   for scale, ps in sorted(muon_buckets.items())]
    return MuonAdamW(muon_groups + groups, fused=fused)


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves and exits after the current step. A second SIGINT
    interrupts immediately."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(
    cfg: Config,
    objective: Objective,
    out_dir: str | Path,
    model: nn.Module,
    *,
    init_from: str | Path | None = None,
    resume: bool = False,
    tokenizer_dir: str | Path | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `model` with `objective` into run folder `out_dir`; returns what happened.

    `init_from`: a run folder whose model.safetensors initialises the weights (e.g. SFT from a
    pretrained run). `resume`: continue exactly from the newest checkpoint in out_dir/checkpoints.
    `stop_at_step`: save a checkpoint and return after this many steps (the schedule still spans
    train.max_steps), e.g. to split a long run into jobs.
    """
    tc = cfg.train
    out_dir = Path(out_dir)
    info = D.setup_distributed(pick_device(tc.device))
    device = info.device
    dtype = pick_dtype(device, tc.dtype)
    backend = make_backend(cfg, info, objective)
    seed_everything(tc.seed)
    ckpt_root = out_dir / "checkpoints"

    ckpt = _starting_point(cfg, model, out_dir, init_from, resume)

    model = objective.prepare_model(model)
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}  # LoRA: the base, never saved
    if ckpt is not None:
        _load_model_state(model, ckpt.model, ckpt.path, frozen)
    model.to(device)
    for extra in objective.frozen_models():  # reference / teacher / reward models: same device, no grad
        extra.to(device).eval().requires_grad_(False)
    raw = model  # the plain module: state dicts come from here (FSDP2 shards it in place)
    aliases = tied_aliases(raw)
    model = backend.wrap(raw, lambda m: build_optimizer(m, cfg, device))
    objective.setup(info, raw)

    start_step, tokens_seen = 0, 0
    if ckpt is not None:
        saved_opt = ckpt.trainer.get("optimizer", "adamw")  # checkpoints from before train.optimizer hold AdamW
        if saved_opt != tc.optimizer:
            raise ConfigError(f"--resume: {ckpt.path} was trained with train.optimizer={saved_opt}, this run asks for "
                              f"train.optimizer={tc.optimizer}; resume with the same optimizer (or start a new run "
                              f"with --init-from)")
        backend.load_optimizer_state(ckpt.optimizer)
        objective.load_state_dict(ckpt.trainer.get("objective", {}))
        start_step, tokens_seen = ckpt.step, int(ckpt.trainer.get("tokens", 0))
        restore_rng(ckpt.trainer["rng"], ckpt.rng_tensors)

    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / "config.toml")
    metrics = MetricsLog(out_dir, info.is_main, start_step if ckpt is not None else None, tc.tensorboard)
    result = TrainResult(out_dir=out_dir, step=start_step, status="done", tokens=tokens_seen)

    def save(step: int) -> None:
        model_state = backend.model_state()  # collective under FSDP: every rank calls it
        model_state = {k: v for k, v in model_state.items() if k not in frozen}
        optim_state = backend.optimizer_state()  # collective: gathers FSDP or ZeRO shards
        if info.is_main:
            state = {"objective": objective.state_dict(), "tokens": result.tokens, "world_size": info.world_size,
                     "schedule": {"step": step, "kind": tc.schedule}, "optimizer": tc.optimizer}
            save_checkpoint(ckpt_root, step, model_state, optim_state, state, cfg, aliases, tc.keep_last)
        D.barrier(info)

    bar = _progress_bar(progress and info.is_main, start_step, tc.max_steps)
    step_setup = _StepSetup(cfg, objective, info, device, dtype, backend, ckpt_root)
    last_saved = start_step if ckpt is not None else -1
    end_step = min(tc.max_steps, stop_at_step) if stop_at_step is not None else tc.max_steps
    t_start = time.perf_counter()
    t_log, tok_log = t_start, 0
    model.train()
    profiling = tc.profile_steps > 0 and info.is_main
    try:
        with _StopFlag() as stop, maybe_profiler(profiling, out_dir, tc.profile_from, tc.profile_steps) as prof:
            for step in range(start_step, end_step):
                lr = lr_at(step, tc)
                backend.set_lr(lr)
                if bar is not None and tc.compile and step == start_step:
                    bar.set_postfix_str(f"compiling the blocks (inductor cache: {inductor_cache_dir()})")
                with region(FORWARD_BACKWARD):
                    loss_mean, n_tok_all, parts, n_stop = _forward_backward(step_setup, step, stop.set)
                with region(OPTIMIZER_STEP):
                    grad_norm = backend.step(tc.grad_clip)

                done = step + 1
                result.step = done
                result.tokens += int(n_tok_all)
                result.losses.append(loss_mean)
                tok_log += int(n_tok_all)
                if done % tc.log_every == 0 or done == end_step:
                    now = time.perf_counter()
                    rec = {"step": done, "loss": loss_mean, "lr": lr, "tokens": result.tokens,
                           "tokens_per_s": tok_log / max(now - t_log, 1e-9), "elapsed_s": now - t_start}
                    if grad_norm is not None:
                        rec["grad_norm"] = float(grad_norm)
                    rss = rss_mb()
                    if rss is not None:
                        rec["rss_mb"] = round(rss, 1)  # this process's resident memory: a leak shows as a rising line
                    rec.update({k: v for k, v in parts.items() if k != "ce_loss" or v != loss_mean})
                    metrics.log(rec)
                    t_log, tok_log = now, 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}", tok_s=f"{rec['tokens_per_s']:.0f}")
                if bar is not None:
                    bar.update(1)
                if tc.eval_every and (done % tc.eval_every == 0 or done == tc.max_steps):
                    vals = validate(model, objective, info, device, dtype)
                    if vals is not None:
                        result.val.append((done, vals["loss"]))
                        if objective.val_is_nll:
                            vals["ppl"] = math.exp(min(vals["loss"], 50.0))
                        metrics.log({"step": done, **{f"val_{k}": v for k, v in vals.items()}})
                        if bar is not None:
                            bar.write(f"step {done}: " + "  ".join(f"val {k} {v:.4f}" for k, v in vals.items()))
                if n_stop:
                    result.status = "interrupted"
                    break
                if tc.save_every and done % tc.save_every == 0:
                    save(done)
                    last_saved = done
                prof.step()
            else:
                if end_step < tc.max_steps:
                    result.status = "stopped"
        result.seconds = time.perf_counter() - t_start
        if result.step != last_saved and result.step > 0:
            save(result.step)
        if result.status == "done":
            # every process: FSDP2's shards are gathered; the main process gets the plain module to save
            final = backend.full_model(lambda state: _plain_model(state, cfg, objective))
            if info.is_main:
                objective.save_final(out_dir, final, cfg, tokenizer_dir)
        if info.is_main:
            if bar is not None:
                bar.close()
            if result.status == "interrupted":
                print(f"interrupted at step {result.step}: checkpoint saved; continue with --resume")
            try:
                plot_metrics(out_dir)
            except Exception as e:  # a plotting problem must never lose a finished run
                print(f"warning: could not draw loss.png: {e}")
    finally:
        metrics.close()
        if bar is not None:
            bar.close()
    D.barrier(info)
    return result


@dataclass
class _StepSetup:
    """What one optimizer step needs, set up once by `train`."""

    cfg: Config
    objective: Objective
    info: D.DistInfo
    device: torch.device
    dtype: torch.dtype
    backend: D.Backend  # the wrapped model, its backward and optimizer step
    ckpt_root: Path


def make_backend(cfg: Config, info: D.DistInfo, objective: Objective) -> D.Backend:
    """The backend train.* asks for (DeepSpeed ZeRO with train.deepspeed, else one process / DDP / FSDP2), after
    checking that the stage and the settings fit it."""
    tc = cfg.train
    if tc.deepspeed:
        ds_config = zero.resolve_config(zero.require_deepspeed(tc.deepspeed), cfg, info.world_size)
        if tc.compile:
            raise ConfigError("train.compile=true with train.deepspeed: DeepSpeed wraps the model itself; "
                              "drop one of them")
        if tc.optimizer != "adamw":
            # ZeRO flattens the parameters into partitions: no process holds a whole matrix for Newton–Schulz
            raise ConfigError(f"train.optimizer={tc.optimizer} with train.deepspeed: ZeRO shards flattened parameters "
                              f"and its checkpoints hold AdamW state only; use train.optimizer=adamw, or "
                              f"train.parallel=ddp|fsdp without train.deepspeed")
        return zero.DeepSpeedBackend(info, ds_config)
    if info.enabled and tc.parallel == "fsdp" and not objective.fsdp:
        raise ConfigError(f"train.parallel=fsdp: the {objective.name} stage samples from the policy outside the "
                          f"training forward, which FSDP2's sharded weights do not allow; use train.parallel=ddp")
    return D.TorchBackend(info, tc.parallel, tc.compile)


def _forward_backward(r: _StepSetup, step: int, stop_requested: bool) -> tuple[float, int, dict[str, float], float]:
    """Gradients of one optimizer step over this process's micro-batches; returns (mean loss over every
    process, tokens over every process, the objective's metrics, how many processes were asked to stop).
    Raises TrainingDiverged on a non-finite loss, before any weight changes."""
    info = r.info
    batches = r.objective.next_batches()
    # Each micro-batch counts by its share of the step's targets over all processes, so the step loss is the mean
    # over every counted token whatever the split into ranks and micro-batches (SFT masks and document boundaries
    # make the counts differ). DDP averages gradients over ranks, hence the world_size factor.
    weights = [r.objective.weight(b) for b in batches]
    (total,) = D.all_reduce_sum([sum(weights)], info)
    shares = [w / total if total > 0 else 1.0 / (len(batches) * info.world_size) for w in weights]
    loss_sum, n_tok, parts = 0.0, 0, {}
    bad = False
    for i, (batch, share) in enumerate(zip(batches, shares)):
        batch = to_device(batch, r.device)
        with r.backend.micro_batch(last=i == len(batches) - 1):
            with autocast(r.device, r.dtype):
                loss, m = r.objective.loss(r.backend.model, batch)
            value = float(loss.detach())
            bad = bad or not math.isfinite(value)
            scaled = loss * (share * info.world_size)  # still run backward when bad: peers wait
            r.backend.backward(scaled, len(batches))
        loss_sum += value * share
        n_tok += r.objective.tokens(batch)
        for k, v in m.items():
            parts[k] = parts.get(k, 0.0) + v * share * info.world_size
    loss_mean, n_bad, n_stop, n_tok_all = D.all_reduce_sum([loss_sum, float(bad), float(stop_requested), float(n_tok)],
                                                           info)
    if n_bad:
        last = latest_checkpoint(r.ckpt_root)
        raise TrainingDiverged(
            f"step {step + 1}: the training loss is {loss_mean} (not finite); stopped without "
            f"saving. Last good checkpoint: {last if last else 'none'} (left untouched). "
            f"Try a lower train.lr, longer train.warmup_steps, or check the data.")
    return loss_mean, int(n_tok_all), parts, n_stop


def _starting_point(cfg: Config, model: nn.Module, out_dir: Path, init_from: str | Path | None,
                    resume: bool) -> Any:
    """Load the weights a run starts from (the --init-from run, the base under a LoRA checkpoint) and return the
    checkpoint to resume, or None; records train.init_from and lora.base in cfg so config.toml keeps them."""
    ckpt_root = out_dir / "checkpoints"
    if cfg.lora.rank > 0 and not resume:
        if init_from is None:
            raise ConfigError("lora.rank ≥ 1 trains adapters over a trained model: pass --init-from RUN (the base run)")
        if not (Path(init_from) / "model.safetensors").exists():
            raise ConfigError(f"--init-from {init_from}: LoRA needs a base run with model.safetensors (an adapter run "
                              f"can be merged first: scratchlm lora merge {init_from} --out MERGED)")
        cfg.lora.base = str(Path(init_from).resolve())  # saved in config.toml: resume and load_run find the base
    if init_from is not None and (Path(init_from) / "config.toml").exists():
        refuse_quantized(init_from, "--init-from")
    if init_from is not None and not resume:
        cfg.train.init_from = str(Path(init_from).resolve())  # saved: resume finds the reference run again
    elif resume and not cfg.train.init_from and (out_dir / "config.toml").exists():
        cfg.train.init_from = load_run_config(out_dir).train.init_from
    ckpt = None
    if resume:
        path = latest_checkpoint(ckpt_root)
        if path is None:
            raise FileNotFoundError(f"--resume: {ckpt_root} has no complete checkpoint to resume from")
        ckpt = load_checkpoint(path)
    elif list_checkpoints(ckpt_root):
        raise ConfigError(f"{out_dir} already holds checkpoints; pass --resume to continue that run, "
                          f"or choose another --out")
    elif init_from is not None:
        load_weights(model, Path(init_from) / "model.safetensors")
    if ckpt is not None and cfg.lora.rank > 0:  # adapter checkpoints hold no base weights: load the base run
        base = init_from or cfg.lora.base or load_run_config(out_dir).lora.base
        cfg.lora.base = str(Path(base).resolve())
        load_weights(model, Path(base) / "model.safetensors")
    return ckpt


def _plain_model(state: dict[str, torch.Tensor], cfg: Config, objective: Objective) -> nn.Module:
    """The final weights (the full state dict gathered from FSDP2's shards) as a plain module, shaped as the stage
    shaped the trained one (LoRA adapters, a reward head), so save_run writes what the stage trained."""
    from scratchlm.runs import build_model

    plain = objective.prepare_model(build_model(cfg))
    _load_model_state(plain, state, "fsdp state")
    return plain


def _load_model_state(model: nn.Module, state: dict[str, torch.Tensor], where: Any,
                      frozen: set[str] = frozenset()) -> None:
    """Load a checkpoint's model state; `frozen` parameters (a LoRA run's base) may be absent from it."""
    state = dict(state)
    for alias, canonical in tied_aliases(model).items():
        if alias not in state and canonical in state:
            state[alias] = state[canonical]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in frozen]
    if missing or unexpected:
        raise ValueError(f"{where}: checkpoint does not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}) — was the model config changed?")


@torch.no_grad()
def validate(model: nn.Module, objective: Objective, info: D.DistInfo, device: torch.device,
             dtype: torch.dtype) -> dict[str, float] | None:
    """Means over the objective's validation batches (all processes): {"loss", and the stage's own metrics},
    or None without validation data."""
    model.eval()
    nll, count, extra = 0.0, 0, {}
    for batch in objective.val_batches():
        with autocast(device, dtype):
            s, n, sums = objective.evaluate(model, to_device(batch, device))
        nll, count = nll + s, count + n
        for k, v in sums.items():
            extra[k] = extra.get(k, 0.0) + v
    model.train()
    names = sorted(extra)  # the same order on every rank
    nll, count, *sums = D.all_reduce_sum([nll, float(count), *(extra[k] for k in names)], info)
    return {"loss": nll / count, **{k: v / count for k, v in zip(names, sums)}} if count else None


def inductor_cache_dir() -> str:
    """Where torch.compile keeps compiled graphs between runs (a second run of the same shapes loads them)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def _progress_bar(enabled: bool, start: int, total: int) -> Any:
    if not enabled:
        return None
    from scratchlm.progress import progress

    return progress(total, initial=start, desc="train", unit="step")
