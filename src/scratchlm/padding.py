"""The one right-padding helper: variable-length id rows as one rectangular tensor.

Semantics (every caller relies on them): row r holds its ids in columns 0 .. len(rows[r])-1 and `pad` in every
column after; `lengths[r]` is that row's count of real ids, so position t of row r is real exactly when
t < lengths[r] (`real_mask`). Padding sits after the real ids, where a causal model's real tokens never attend,
so the ids before it need no attention mask; readers that reduce over a row (a mean, the last real token) use
`lengths` or `real_mask` to skip it. Layer 0: imports only numpy and torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def right_pad(rows: Sequence[Sequence[int]], pad: int = 0,
              length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T] int64, lengths [B] int64): each row's ids from column 0, then `pad` up to T, where T is
    `length` (at least the longest row) or else the longest row's length."""
    lens = [len(r) for r in rows]
    T = max(lens) if length is None else length
    if lens and max(lens) > T:
        raise ValueError(f"right_pad: a row of {max(lens)} ids does not fit length={T}")
    out = np.full((len(rows), T), pad, dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, : lens[r]] = np.asarray(row, dtype=np.int64)
    return torch.from_numpy(out), torch.tensor(lens, dtype=torch.long)


def real_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Bool [B, T=length]: True where position t of row r holds a real id (t < lengths[r]), False on padding."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
