"""The demo's reward stage: a reward model from the SFT run on the preference pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.demo.common import train_post_sft
from scratchlm.demo.settings import DemoSettings


def run_reward_stage(out: Path, s: DemoSettings, paths: dict[str, Path], sft_scores: dict[str, tuple[int, int]],
                     progress: bool) -> dict[str, Any]:
    """A reward model from the SFT run on the preference pairs; held-out pair accuracy and mean margin (the
    freshly initialised score head before training is the reference point: about chance)."""
    import torch

    from scratchlm.shards.datasets import open_shards
    from scratchlm.eval.preference import pair_accuracy
    from scratchlm.runs import load_run
    from scratchlm.model.reward import RewardModel

    run_dir = train_post_sft("reward", out, s, paths, s.reward_steps, s.reward_sets,
                             "reward model: scoring right vs wrong replies", progress)
    held = open_shards(paths["pref_eval"])
    sft, _, cfg = load_run(out / "sft")
    torch.manual_seed(s.seed)
    before = pair_accuracy(RewardModel(sft), held, cfg.train.seq_len, max_pairs=s.eval_pairs)
    rm, _, _ = load_run(run_dir)
    after = pair_accuracy(rm, held, cfg.train.seq_len, max_pairs=s.eval_pairs)
    return {"pairs": min(held.n_pairs, s.eval_pairs), "accuracy_before": before["accuracy"],
            "accuracy_after": after["accuracy"], "margin_after": after["margin"]}
