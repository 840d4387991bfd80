"""Validation perplexity of a model over consecutive windows of prepared shards, next to an add-one unigram
model fitted on the training shards (the floor any language model should beat)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def perplexities(model: Any, train_dir: Path, val_dir: Path, seq_len: int,
                 max_windows: int = 400) -> tuple[float, float]:
    """(model ppl, add-one unigram ppl fitted on the training shards), both over the same predicted
    tokens of consecutive validation windows."""
    import numpy as np
    import torch

    from scratchlm.data.datasets import open_shards

    train, val = open_shards(train_dir), open_shards(val_dir)
    V = int(model.config.vocab_size)
    counts = np.bincount(np.asarray(train.read(0, train.n_tokens), dtype=np.int64), minlength=V)[:V]
    logp_uni = np.log((counts + 1.0) / (counts.sum() + V))
    n_win = min(max_windows, (val.n_tokens - 1) // seq_len)
    if n_win < 1:
        raise ValueError(f"{val_dir}: {val.n_tokens} tokens, fewer than one window of seq_len {seq_len} + 1")
    device = next(model.parameters()).device
    nll, uni, n = 0.0, 0.0, 0
    for start in range(0, n_win, 16):
        rows = [np.asarray(val.read(w * seq_len, seq_len + 1), dtype=np.int64) for w in range(start, min(n_win, start + 16))]
        ids = torch.from_numpy(np.stack(rows))  # [b, seq_len + 1]
        with torch.no_grad():
            out = model(ids[:, :-1].to(device), targets=ids[:, 1:].to(device))
        k = ids[:, 1:].numel()
        nll += float(out.ce_loss) * k
        uni += -float(logp_uni[ids[:, 1:].numpy()].sum())
        n += k
    return math.exp(nll / n), math.exp(uni / n)
