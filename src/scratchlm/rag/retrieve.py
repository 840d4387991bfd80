"""Search a rag database: dense top-k by cosine / L2 / L1, BM25, or both fused by reciprocal rank.

BM25 (via `bm25s`) needs words. English is split into lower-cased alphanumeric words minus common
stopwords; Chinese has no spaces, so each run of CJK characters contributes its single characters and
its character bigrams — the usual segmenter-free choice: a bigram like 明月 or 李白 carries most of a
word's meaning, and unigrams still match one-character words and names split differently.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from scratchlm.rag.embedders import Embedder
from scratchlm.rag.similarity import check_metric, reciprocal_rank_fusion
from scratchlm.rag.store import Hit, VectorStore

MODES = ("dense", "hybrid", "bm25")

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\U00020000-\U0002ffff"
_TOKEN = re.compile(f"[{_CJK}]+|[^\\W{_CJK}]+")
_CJK_RUN = re.compile(f"[{_CJK}]+")


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def bm25_tokens(text: str, stopwords: frozenset[str] = frozenset()) -> list[str]:
    """Words for BM25: lower-cased alphanumeric words (stopwords dropped) and CJK unigrams + bigrams."""
    out: list[str] = []
    for m in _TOKEN.finditer(text.lower()):
        w = m.group()
        if _CJK_RUN.fullmatch(w):
            out.extend(w)
            out.extend(w[i:i + 2] for i in range(len(w) - 1))
        elif w not in stopwords and not w.isspace():
            out.append(w)
    return out


class BM25Index:
    """bm25s over the chunk texts of a store, built in memory (seconds for 100k chunks)."""

    def __init__(self, ids: Sequence[int], texts: Sequence[str]):
        try:
            import bm25s
        except ImportError:
            raise ValueError("--bm25 needs the package bm25s: pip install -e '.[rag]'") from None
        self.ids = np.asarray(ids, dtype=np.int64)
        self.stopwords = _stopwords()
        self.bm25 = bm25s.BM25()
        # an empty token list would break bm25s's index; such a chunk simply never matches
        corpus = [bm25_tokens(t, self.stopwords) or ["\x00"] for t in texts]
        self.bm25.index(corpus, show_progress=False) if corpus else None

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk_id, BM25 score) of the k best-scoring chunks with a score > 0, best first."""
        if not len(self.ids):
            return []
        ids = self.bm25.get_tokens_ids(bm25_tokens(query, self.stopwords))
        if not ids:
            return []
        scores = self.bm25.get_scores_from_ids(ids)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]
        return [(int(self.ids[i]), float(scores[i])) for i in top if scores[i] > 0]


class Retriever:
    """A store plus the embedder that built it; `search` returns hits with their text and source."""

    def __init__(self, store: VectorStore, embedder: Embedder | None):
        if embedder is not None and (embedder.name != store.embedder or embedder.dim != store.dim):
            raise ValueError(
                f"{store.path}: built with embedder {store.embedder!r} (dim {store.dim}), not {embedder.name!r} "
                f"(dim {embedder.dim}); use the embedder that built the database")
        self.store = store
        self.embedder = embedder
        self._bm25: BM25Index | None = None

    def bm25(self) -> BM25Index:
        """The BM25 index, built on first use."""
        if self._bm25 is None:
            self._bm25 = BM25Index(*self.store.all_texts())
        return self._bm25

    def ranked_ids(self, query: str, k: int = 5, metric: str | None = None, mode: str = "dense",
                   depth: int = 50) -> list[tuple[int, float]]:
        """(chunk_id, score) best first: a distance (dense), a BM25 score (bm25) or an RRF score (hybrid)."""
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; choose one of: {', '.join(MODES)}")
        if k < 1:
            raise ValueError(f"search: k={k} must be >= 1")
        if mode == "bm25":
            return self.bm25().search(query, k)
        if self.embedder is None:
            raise ValueError("dense search needs an embedder")
        metric = check_metric(metric or self.store.metric)
        qvec = self.embedder.embed_queries([query])[0]
        if mode == "dense":
            return self.store.search(qvec, k, metric)
        # hybrid: each list contributes its top `depth` (deeper than k, so an item ranked
        # moderately by both can rise above one ranked high by one list only)
        dense = [i for i, _ in self.store.search(qvec, max(k, depth), metric)]
        lexical = [i for i, _ in self.bm25().search(query, max(k, depth))]
        fused = reciprocal_rank_fusion([dense, lexical])
        scores = {i: s for i, s in zip(fused, _rrf_scores([dense, lexical], fused))}
        return [(i, scores[i]) for i in fused[:k]]

    def search(self, query: str, k: int = 5, metric: str | None = None, mode: str = "dense",
               depth: int = 50) -> list[Hit]:
        """The top-k chunks for `query` with source, chunk number and text."""
        ranked = self.ranked_ids(query, k, metric, mode, depth)
        rows = self.store.get_chunks([i for i, _ in ranked])
        return [Hit(i, *rows[i], score=s) for i, s in ranked if i in rows]


def _rrf_scores(rankings: Sequence[Sequence[int]], items: Sequence[int], k: int = 60) -> list[float]:
    """The RRF score of each item (for display next to the fused ranking)."""
    pos = [{item: r for r, item in enumerate(ranking, 1)} for ranking in rankings]
    return [sum(1.0 / (k + p[i]) for p in pos if i in p) for i in items]
