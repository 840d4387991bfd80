"""Shared by the export, serving and tool tests: a randomly initialised debug run, and a model trained by heart on a
few chats."""

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


def train_by_heart(cfg: Config, rows: list[tuple[list[int], list[int]]], steps: int, lr: float = 1e-2) -> Transformer:
    """A debug-preset model (seeded) trained on the (ids, loss mask) rows of a few chats until it knows them by heart;
    returned in eval mode."""
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    width = max(len(ids) for ids, _ in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        x[r, :len(ids)] = torch.tensor(ids)
        targets = [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
        y[r, :len(targets)] = torch.tensor(targets)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(x, targets=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
