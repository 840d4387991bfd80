"""The retrieval maths written out: exact distances, top-k, and reciprocal-rank fusion.

This is the reference the sqlite-vec store is tested against (same top-k on the same vectors) and the
baseline bench_rag.py times it against. Distances follow sqlite-vec's definitions, smaller = closer:

    cosine(a, b) = 1 - a·b / (|a| |b|)          in [0, 2]; a zero vector is at distance 1 from anything
    l2(a, b)     = sqrt(sum_i (a_i - b_i)^2)    Euclidean
    l1(a, b)     = sum_i |a_i - b_i|            Manhattan
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("cosine", "l2", "l1")


def check_metric(metric: str) -> str:
    """The metric name, lower-cased, or a ValueError listing the allowed ones."""
    m = metric.lower()
    if m not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    return m


def distances(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row of `vectors` [N, D] to `query` [D] → [N] float64 (smaller = closer)."""
    metric = check_metric(metric)
    # float64 so the reference is more exact than the float32 store it checks
    V = np.asarray(vectors, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    if V.ndim != 2 or q.shape != (V.shape[1],):
        raise ValueError(f"distances: vectors {V.shape} and query {q.shape} must be [N, D] and [D]")
    if metric == "cosine":
        norms = np.linalg.norm(V, axis=1) * np.linalg.norm(q)
        dots = V @ q
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = np.where(norms > 0, dots / norms, 0.0)
        return 1.0 - sim
    diff = V - q  # [N, D]
    if metric == "l2":
        return np.sqrt(np.einsum("nd,nd->n", diff, diff))
    return np.abs(diff).sum(axis=1)


def top_k(vectors: np.ndarray, query: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, distances) of the k rows closest to `query`, closest first; ties by row index."""
    d = distances(vectors, query, metric)
    k = min(k, len(d))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    # argpartition finds the k smallest in O(N); only those k are then sorted (stable: ties by index)
    part = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
    order = part[np.lexsort((part, d[part]))]
    return order, d[order]


def reciprocal_rank_fusion(rankings: Sequence[Sequence], k: int = 60, weights: Sequence[float] | None = None) -> list:
    """Fuse ranked lists of ids: score(id) = sum_r w_r / (k + rank_r(id)), rank from 1 (Cormack et al. 2009).

    Only ranks are used, never the scores, so a cosine distance and a BM25 score (different scales)
    combine without tuning; k=60 damps the weight of the very top ranks. Ties keep first-seen order.
    """
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"reciprocal_rank_fusion: {len(weights)} weights for {len(rankings)} rankings")
    scores: dict = {}
    for w, ranking in zip(weights, rankings):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    return sorted(scores, key=lambda item: -scores[item])  # sorted() is stable: first-seen wins ties
