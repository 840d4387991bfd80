"""Learning-rate schedules as pure functions of the step.

The loop sets every param group's lr to `lr_at(step, ...)` before each optimizer step, so the
"scheduler state" is just the step number: resuming from a checkpoint reproduces the schedule
exactly without pickling a scheduler object.
"""

from __future__ import annotations

import math

from scratchlm.config import TrainConfig


def lr_factor(step: int, max_steps: int, warmup_steps: int, schedule: str = "cosine",
              min_lr_ratio: float = 0.1, wsd_decay_frac: float = 0.2) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        # linear warmup that reaches the peak at the last warmup step; never 0 at step 0
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, max_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        # warmup-stable-decay: hold the peak, then decay linearly over the last wsd_decay_frac of steps
        decay_steps = max(1, int(round(wsd_decay_frac * max_steps)))
        decay_start = max(warmup_steps, max_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return 1.0 - (1.0 - min_lr_ratio) * progress
    raise ValueError(f"train.schedule={schedule!r} is not one of: cosine, wsd, constant")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate at optimizer step `step` for a TrainConfig."""
    return cfg.lr * lr_factor(step, cfg.max_steps, cfg.warmup_steps, cfg.schedule,
                              cfg.min_lr_ratio, cfg.wsd_decay_frac)
