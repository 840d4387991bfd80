"""The demo's pretraining stage: the preset from scratch on the built-in corpus."""

from __future__ import annotations

from pathlib import Path

from scratchlm.demo.common import say, train_demo_stage
from scratchlm.demo.settings import DemoSettings, stage_sets


def run_pretrain_stage(out: Path, s: DemoSettings, paths: dict[str, Path], progress: bool) -> None:
    """Pretrain the s.preset model for s.pretrain_steps steps into out/pretrain."""
    run_dir = out / "pretrain"
    say(f"pretraining the {s.preset!r} model for {s.pretrain_steps} steps → {run_dir}")
    train_demo_stage("pretrain", run_dir, s, paths, stage_sets(s, "pretrain"), None, progress)
