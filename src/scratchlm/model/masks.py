"""Attention masks, below both the attention layers and the caches: `AttnPlan` (which keys each query sees,
shared by every layer of one forward), `build_mask` (causal + padding + sliding window, for the contiguous
KVCache, the paged engine and padded full-sequence forwards) and the packed-documents mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class AttnPlan:
    """Which keys each query attends to, shared by all layers of one forward.

    mask: bool [B or 1, 1, T, S] (True = attend) or None. With mask None, is_causal=True means plain causal
    attention over T == S keys, and is_causal=False means every query sees every key (one-token decode).
    """

    mask: Optional[torch.Tensor]
    is_causal: bool


def build_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, k_valid: Optional[torch.Tensor], window: int
) -> torch.Tensor:
    """Boolean mask [B|1, 1, T, S] from absolute query positions [T] (shared by the rows) or [B, T] (each row
    at its own position: the paged engine), key positions [S] and key validity [B, S].

    A query attends to valid keys at or before it, and with a sliding window only to the last `window`
    positions (itself included). Every query also sees its own key, so a padding query never has an
    all-masked row (which would make softmax NaN and spread through 0·NaN in P·V).
    """
    diff = q_pos[..., :, None] - k_pos[None, :]  # [T, S] or [B, T, S]: distance back from query to key
    if diff.dim() == 2:
        diff = diff[None]  # [1, T, S]
    # `diff > 0` here would be an equivalent mutant: the query's own key (diff == 0) is allowed again below
    allowed = diff >= 0  # pragma: no mutate
    if window:
        allowed &= diff < window
    if k_valid is not None:
        allowed = allowed & k_valid[:, None, :]  # [B, T, S]
    allowed = allowed | (diff == 0)
    return allowed[:, None]  # [B|1, 1, T, S]


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its own document, for doc_ids [B, T] → [B, T] (0 at every doc start)."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # index where each doc began
    return idx - first


def build_document_mask(doc_ids: torch.Tensor, window: int) -> torch.Tensor:
    """Block-diagonal causal mask [B, 1, T, T] for packed rows: a query sees earlier keys of its own document
    only (doc_ids [B, T], equal ids = same document; runs of one id must be contiguous)."""
    T = doc_ids.shape[1]
    pos = torch.arange(T, device=doc_ids.device)
    diff = pos[:, None] - pos[None, :]  # [T, S]
    allowed = (diff >= 0)[None] & (doc_ids[:, :, None] == doc_ids[:, None, :])  # [B, T, S]
    if window:
        allowed &= (diff < window)[None]
    return allowed[:, None]
