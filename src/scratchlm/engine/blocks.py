"""The KV block pool: fixed-size blocks handed out to sequences, reference-counted, with prefix caching.

A sequence's KV cache is a list of block ids (its block table); position p lives in block table[p // size] at
offset p % size. A *full* block is immutable, so it can be shared: it is keyed by a hash of its tokens chained
with the hash of the block before it (vLLM's scheme — equal keys mean equal whole prefixes, not just equal
blocks), and a later request whose prompt starts with the same tokens takes the block instead of prefilling it.
When its last user frees it, a hashed block is kept as *evictable* (least recently used first) until the
pool needs its memory; an unhashed one goes straight back to the free list.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Sequence


class NoFreeBlocks(RuntimeError):
    """The pool has no free or evictable block left."""


def block_hash(parent: bytes | None, tokens: Sequence[int]) -> bytes:
    """Key of a full block: sha256 over the previous block's key and this block's token ids."""
    h = hashlib.sha256(parent or b"root")
    h.update(b",".join(str(int(t)).encode() for t in tokens))
    return h.digest()


class BlockPool:
    """`num_blocks` blocks of `block_size` token slots; allocation, sharing and LRU eviction by prefix hash."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockPool: num_blocks={num_blocks} and block_size={block_size} must be ≥ 1")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.free_ids: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        self.refs = [0] * num_blocks
        self.hash_of: dict[int, bytes] = {}  # block → its key, for full blocks registered for sharing
        self.by_hash: dict[bytes, int] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()  # ref 0 but still cached; oldest first
        self.hits = 0  # blocks served from the prefix cache (for /metrics)

    def num_free(self) -> int:
        """Blocks that can be allocated now (free, or cached and evictable)."""
        return len(self.free_ids) + len(self.evictable)

    def num_used(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - self.num_free()

    def allocate(self) -> int:
        """A block for one sequence (ref 1): a free one, else the least recently used cached one."""
        if self.free_ids:
            b = self.free_ids.pop()
        elif self.evictable:
            b, _ = self.evictable.popitem(last=False)
            del self.by_hash[self.hash_of.pop(b)]
        else:
            raise NoFreeBlocks(f"all {self.num_blocks} KV blocks are in use")
        self.refs[b] = 1
        return b

    def share(self, b: int) -> None:
        """One more sequence uses block `b` (a fork, or a prefix-cache hit)."""
        if self.refs[b] == 0:
            self.evictable.pop(b, None)
        self.refs[b] += 1

    def release(self, b: int) -> None:
        """One sequence stops using block `b`; at ref 0 it becomes evictable (hashed) or free."""
        if self.refs[b] <= 0:
            raise RuntimeError(f"BlockPool: block {b} released more often than taken")
        self.refs[b] -= 1
        if self.refs[b] == 0:
            if b in self.hash_of:
                # the OrderedDict is an ordered set: the value is never read (so a mutant of it is equivalent)
                self.evictable[b] = None  # pragma: no mutate
            else:
                self.free_ids.append(b)

    def lookup(self, key: bytes) -> int | None:
        """The cached block with this key, now shared with the caller (ref + 1), or None."""
        if not self.prefix_caching:
            return None
        b = self.by_hash.get(key)
        if b is not None:
            self.share(b)
            self.hits += 1
        return b

    def register(self, b: int, key: bytes) -> None:
        """Block `b` is full with the tokens of `key`: later prompts with the same prefix may share it."""
        if not self.prefix_caching or b in self.hash_of or key in self.by_hash:
            return  # already cached (an equal block computed twice stays private to its sequence)
        self.hash_of[b] = key
        self.by_hash[key] = b
