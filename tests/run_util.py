"""Shared by the export tests: a run folder holding a randomly initialised debug model."""

from __future__ import annotations

from pathlib import Path

import torch

from scratchlm.config import Config, load_config
from scratchlm.model.transformer import Transformer
from scratchlm.runs import save_run


def random_debug_run(path: Path, tok_dir: Path, *overrides: str, seed: int = 0) -> tuple[Transformer, Config]:
    """Save a debug-preset model with a large init and random norm weights (so every weight must map) to `path`."""
    cfg = load_config("debug", ["model.init_std=0.2", *overrides])
    torch.manual_seed(seed)
    model = Transformer(cfg.model).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    save_run(path, model, cfg, tok_dir)
    return model, cfg
