"""What every demo stage uses: the `[demo]` line, training one stage folder (resumable, refused when started with
other step counts), and the before/after accuracy shapes of the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.demo.settings import DemoSettings, post_sft_sets

# demo stages trained by the sft objective on their own data
SFT_LIKE = {"lora": "sft", "grpo_cold": "sft", "tools": "sft"}


def say(msg: str) -> None:
    """One `[demo]` progress line."""
    print(f"[demo] {msg}", flush=True)


def train_demo_stage(kind: str, out: Path, s: DemoSettings, paths: dict[str, Path], sets: list[str],
                     init_from: Path | None, progress: bool, stop_at_step: int | None = None) -> Any:
    """Train demo stage `kind` into `out` with `--set` overrides `sets` on the data of `paths` (resuming an
    interrupted earlier demo); a run stopped by a signal raises KeyboardInterrupt (rerun the demo to continue)."""
    from scratchlm.train.checkpoint import list_checkpoints
    from scratchlm.train.stage import train_stage

    val = {"pretrain": paths["pretrain_val"], "reward": paths.get("pref_val"), "dpo": paths.get("pref_val"),
           "tools": paths.get("tools_val")}.get(kind, paths["sft_val"])
    if kind in ("sft", "distill") and s.sft_pretrain_mix > 0:
        sets = sets + [f"train.pretrain_mix_data={paths['pretrain']}"]
    resume = bool(list_checkpoints(out / "checkpoints"))  # an interrupted earlier demo continues
    if resume and stop_at_step is None:  # a stage trained in parts (the cold start) resumes each part
        say(f"resuming {out} from its last checkpoint")
    data = {"reward": paths.get("pref"), "dpo": paths.get("pref"), "distill": paths["sft"]}.get(kind) or paths[kind]
    result = train_stage(SFT_LIKE.get(kind, kind), out, s.preset, sets + [f"train.val_data={val}"], str(data),
                         init_from=init_from, resume=resume, tokenizer=paths["tokenizer"], stop_at_step=stop_at_step,
                         progress=progress)
    if result.status not in ("done", "stopped"):
        raise KeyboardInterrupt  # stopped by a signal: the checkpoint is saved, rerun the demo to continue
    return result


def check_stage_steps(run_dir: Path, steps: int) -> None:
    """Refuse to reuse or resume a stage folder that was started with another step count: its model (or its
    lr schedule) would not be the one the settings and summary describe."""
    from scratchlm.config import read_toml

    cfg_file = run_dir / "config.toml"
    if not cfg_file.is_file():
        return
    had = read_toml(cfg_file).get("train", {}).get("max_steps")
    if had != steps:
        flag = {"pretrain": "--pretrain-steps", "sft": "--sft-steps"}.get(run_dir.name, f"DemoSettings.{run_dir.name}_steps")
        raise SystemExit(f"scratchlm demo: {cfg_file} has train.max_steps = {had}, but this demo asks for {steps} "
                         f"({flag}); delete {run_dir} (and the stages after it) or pass another --out")


def train_post_sft(stage: str, out: Path, s: DemoSettings, paths: dict[str, Path], steps: int, sets: list[str],
                   what: str, progress: bool, init: str = "sft") -> Path:
    """Train demo stage `stage` from run out/init (the SFT run) into out/stage (skipped when it finished before)."""
    run_dir = out / stage
    check_stage_steps(run_dir, steps)
    if (run_dir / "model.safetensors").exists():
        say(f"{run_dir} already trained; delete it to train again")
    else:
        say(f"{what} for {steps} steps → {run_dir}")
        train_demo_stage(stage, run_dir, s, paths, post_sft_sets(s, steps, sets), out / init, progress)
    return run_dir


def accuracy(counts: tuple[int, int]) -> float:
    """correct / total of a (correct, total) pair (0 for no items)."""
    return counts[0] / max(1, counts[1])


def before_after(sft_scores: dict[str, tuple[int, int]], scores: dict[str, tuple[int, int]]) -> dict[str, list[float]]:
    """{task: [the SFT model's held-out accuracy, this stage's]} for the tasks both were scored on."""
    return {k: [accuracy(sft_scores[k]), accuracy(v)] for k, v in sorted(scores.items()) if k in sft_scores}
