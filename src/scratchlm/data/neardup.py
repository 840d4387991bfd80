"""Near-duplicate detection: MinHash over token-id shingles, vectorised with numpy, plus LSH banding.

Why not `datasketch.MinHash` + `MinHashLSH` directly: hashing every shingle in Python and inserting
every document through datasketch costs ~90 µs per document, far more than tokenising it. Here:
- shingles are n-grams of *token ids* (we have the ids anyway; it works the same for Chinese and
  English, where word shingles would not);
- the signature is one-permutation MinHash (one 64-bit hash per shingle, split into `num_perm` bins,
  min per bin; empty bins filled by rotation densification, Shrivastava & Li 2014): O(tokens), not
  O(tokens × num_perm), computed for a whole batch of documents at once;
- LSH banding uses the (bands, rows) that datasketch's `MinHashLSH` picks for the same threshold
  (`lsh_params` reproduces its choice; the test checks it), and one `Int64Set` of band keys (8 bytes a key).
A document is a near-duplicate when any of its band keys was seen in an earlier kept document.
"""

from __future__ import annotations

import numpy as np

from scratchlm.data.hashset import Int64Set

NUM_PERM = 64
SHINGLE = 3
EMPTY = np.uint32(0xFFFFFFFF)
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_KEY_MASK = np.uint64(0x7FFFFFFFFFFFFFFF)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) minimising false-positive + false-negative area, as datasketch's MinHashLSH does."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"near-dup threshold must be in (0, 1), got {threshold}")
    s_lo = np.linspace(0.0, threshold, 1001)
    s_hi = np.linspace(threshold, 1.0, 1001)
    best, best_err = (0, 0), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - s_lo**r) ** b, s_lo)
            fn = np.trapezoid((1 - s_hi**r) ** b, s_hi)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


def _tables(size: int, shingle: int, seed: int) -> np.ndarray:
    """[shingle, size] uint32 random table per shingle position (tabulation hashing of token ids)."""
    pos = np.arange(shingle, dtype=np.uint64)[:, None] * np.uint64(1 << 40)
    z = _mix64(np.arange(size, dtype=np.uint64)[None, :] + pos + np.uint64(seed) * _K2)
    return (z >> np.uint64(32)).astype(np.uint32)


def minhash_signatures(
    ids: np.ndarray, starts: np.ndarray, num_perm: int = NUM_PERM, shingle: int = SHINGLE, seed: int = 0
) -> np.ndarray:
    """[D, num_perm] uint32 one-permutation MinHash of each document's token-id `shingle`-grams.

    `ids` holds the D documents back to back; `starts` has D+1 offsets (starts[-1] == len(ids)).
    A bin no shingle fell into holds EMPTY (no densification: `band_keys` skips all-empty bands, and
    `jaccard_estimate` ignores bins empty in both). Documents shorter than `shingle` are all EMPTY.
    """
    if num_perm & (num_perm - 1) or not 1 < num_perm <= 1 << 16:
        raise ValueError(f"num_perm must be a power of two in [2, 65536], got {num_perm}")
    ids = np.asarray(ids)
    starts = np.asarray(starts, dtype=np.int64)
    n, n_docs = len(ids), len(starts) - 1
    sig = np.full(n_docs * num_perm + 1, EMPTY, dtype=np.uint32)  # last slot: a bin for invalid shingles
    if n >= shingle:
        tables = _tables(int(ids.max()) + 1, shingle, seed)
        # h[i] = hash of ids[i : i+shingle]: XOR of one random table entry per position (3-independent).
        h = tables[0][ids[: n - shingle + 1]]
        for k in range(1, shingle):
            h ^= tables[k][ids[k : n - shingle + 1 + k]]
        bits = num_perm.bit_length() - 1
        # slot = doc·num_perm + top `bits` bits of h; values are the whole h (its top bits are the bin).
        slot = (h >> np.uint32(32 - bits)).astype(np.int64)
        slot += np.repeat(np.arange(0, n_docs * num_perm, num_perm, dtype=np.int64), np.diff(starts))[: len(h)]
        # A shingle starting at i crosses a document boundary b when b - shingle < i < b.
        cross = (starts[1:-1, None] - np.arange(1, shingle)[None, :]).ravel()
        slot[cross[(cross >= 0) & (cross < len(h))]] = n_docs * num_perm
        np.minimum.at(sig, slot, h)
    return sig[:-1].reshape(n_docs, num_perm)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[D, bands] int64 key per LSH band (band index mixed in); -1 marks an all-EMPTY band (no key)."""
    cols = np.ascontiguousarray(sig[:, : bands * rows].T)  # [bands·rows, D]: rows of the fold below
    keys = np.empty((bands, sig.shape[0]), dtype=np.int64)
    for b in range(bands):
        part = cols[b * rows : (b + 1) * rows]
        acc = np.full(sig.shape[0], (b + 1) * 0x2545F4914F6CDD1D, dtype=np.uint64)
        for j in range(rows):
            acc ^= part[j]
            acc *= _K1
        keys[b] = (_mix64(acc) & _KEY_MASK).view(np.int64)
        keys[b, (part == EMPTY).all(axis=0)] = -1
    return keys.T


class NearDupIndex:
    """Streams batches of documents; `filter` says which are not near-duplicates of earlier ones."""

    def __init__(self, threshold: float = 0.8, num_perm: int = NUM_PERM, shingle: int = SHINGLE, seed: int = 0):
        self.threshold = threshold
        self.num_perm, self.shingle, self.seed = num_perm, shingle, seed
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._seen = Int64Set()  # band keys of kept documents: `bands` keys per document, 8 bytes each

    def filter(self, ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Bool [D]: True for documents to keep; kept ones join the index (order matters within a batch)."""
        sig = minhash_signatures(ids, starts, self.num_perm, self.shingle, self.seed)
        keys = band_keys(sig, self.bands, self.rows)  # [D, bands]
        keep = np.ones(len(keys), dtype=bool)
        if not len(keys):
            return keep
        # Fast path, vectorised: a document none of whose keys occurs elsewhere (earlier batches, or another
        # document of this batch) is kept. Only the rest go through the loop.
        flat = keys.ravel()
        _uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        in_seen = self._seen.contains(keys)
        valid = keys != -1  # all-empty bands carry no key
        clash = ((counts[inverse.reshape(-1)] > 1).reshape(keys.shape) | in_seen) & valid
        suspect = clash.any(axis=1)
        self._seen.add(keys[~suspect][valid[~suspect]])
        # A suspect's keys may also clash with an earlier suspect of this batch kept by this loop.
        added: set[int] = set()
        for d in np.flatnonzero(suspect).tolist():
            row = keys[d][valid[d]].tolist()
            if in_seen[d].any() or not added.isdisjoint(row):
                keep[d] = False
            else:
                added.update(row)
        if added:
            self._seen.add(np.fromiter(added, dtype=np.int64, count=len(added)))
        return keep


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    """One-permutation estimate of shingle-set Jaccard: equal bins among bins not empty in both."""
    used = (a != EMPTY) | (b != EMPTY)
    return float(np.mean(a[used] == b[used])) if used.any() else 0.0
