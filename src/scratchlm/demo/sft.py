"""The demo's SFT stage: the pretrained model on the synthetic-task chats (with pretraining rows mixed in)."""

from __future__ import annotations

from pathlib import Path

from scratchlm.demo.common import say, train_demo_stage
from scratchlm.demo.settings import DemoSettings, stage_sets


def run_sft_stage(out: Path, s: DemoSettings, paths: dict[str, Path], progress: bool) -> None:
    """SFT from out/pretrain for s.sft_steps steps into out/sft."""
    run_dir = out / "sft"
    say(f"SFT on the synthetic tasks for {s.sft_steps} steps → {run_dir}")
    train_demo_stage("sft", run_dir, s, paths, stage_sets(s, "sft"), out / "pretrain", progress)
