"""A set of 64-bit keys in 8 bytes per key, queried and filled a numpy batch at a time (dedup state at scale).

A Python `set` of ints costs ~60-100 bytes per key (the int object plus a hash-table slot at ≤ 2/3 load): the
exact-dedup hashes and the near-dup band keys (several per document) of MiniMind's 1.4 M-line pretrain file took
hundreds of MB that way, and grew with the file. Here the keys live in sorted int64 arrays of doubling sizes (a
log-structured merge: a new batch is a level; two levels of similar size merge into one), so a key costs 8 bytes,
a lookup is a binary search per level (O(log² n) per key, vectorised), and an insert is amortised O(log n).
"""

from __future__ import annotations

import numpy as np


class Int64Set:
    """Sorted int64 levels; `contains` and `add` take arrays."""

    def __init__(self) -> None:
        self._levels: list[np.ndarray] = []  # each sorted and unique; sizes decrease along the list
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys."""
        return sum(a.nbytes for a in self._levels)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Bool array: which of `keys` are in the set."""
        keys = np.asarray(keys, dtype=np.int64)
        found = np.zeros(keys.shape, dtype=bool)
        for level in self._levels:
            pos = np.searchsorted(level, keys)
            pos[pos == len(level)] = 0  # past the end: compare against any element (never equal unless present)
            found |= level[pos] == keys
        return found

    def add(self, keys: np.ndarray) -> None:
        """Insert `keys` (duplicates and keys already present are fine)."""
        keys = np.unique(np.asarray(keys, dtype=np.int64))
        if len(self._levels) and len(keys):
            keys = keys[~self.contains(keys)]
        if not len(keys):
            return
        self._levels.append(keys)
        self._n += len(keys)
        # Merge while the newest level is at least half its older neighbour: O(log n) levels, each key merged
        # O(log n) times. A merge holds the two inputs and the output at once (the transient peak).
        while len(self._levels) > 1 and 2 * len(self._levels[-1]) >= len(self._levels[-2]):
            b = self._levels.pop()
            a = self._levels.pop()
            merged = np.concatenate([a, b])
            merged.sort(kind="stable")
            self._levels.append(merged)
