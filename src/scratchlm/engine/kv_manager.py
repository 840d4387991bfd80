"""The KV manager: each sample's block table over the block pool (blocks.py) — prefix match, admission, fork,
growth by one block, registration of full blocks for prefix caching, and freeing.

Admission is all or nothing: `admit` first counts what a prompt needs (its cached prefix blocks it would take,
the new blocks to allocate, the headroom asked for) and touches the pool only if everything fits, so a request
that has to wait leaves the pool (its cache, its LRU order, its hit counter) as it was.
"""

from __future__ import annotations

from typing import Callable, Sequence

from scratchlm.engine.blocks import BlockPool, NoFreeBlocks, block_hash
from scratchlm.engine.request import BlockTable


class KVManager:
    """Block tables of the running samples over one `BlockPool` of `num_blocks` blocks of `block_size` slots."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        self.pool = BlockPool(num_blocks, block_size, prefix_caching)
        self.block_size = block_size

    def blocks_needed(self, n_tokens: int) -> int:
        """Blocks that hold `n_tokens` tokens."""
        return -(-n_tokens // self.block_size)

    def match_prefix(self, tokens: Sequence[int]) -> list[tuple[int, bytes]]:
        """(block, key) of the cached blocks that hold the prompt's leading full blocks, without taking them. The
        last token is always recomputed, so a whole-prompt hit still leaves one token to prefill for the logits."""
        if not self.pool.prefix_caching:
            return []
        hits: list[tuple[int, bytes]] = []
        key = None  # pragma: no mutate (block_hash reads any false parent, None or "", as the root)
        bs = self.block_size
        for i in range((len(tokens) - 1) // bs):
            key = block_hash(key, tokens[i * bs:(i + 1) * bs])
            b = self.pool.by_hash.get(key)
            if b is None:
                break
            hits.append((b, key))
        return hits

    def fits(self, tokens: Sequence[int], headroom: int = 0) -> tuple[bool, bool]:
        """(the prompt's blocks fit now, they fit with `headroom` blocks left over), touching nothing."""
        hits = self.match_prefix(tokens)
        # a cached block nobody holds counts as free until this prompt takes it
        free = self.pool.num_free() - sum(1 for b, _ in hits if self.pool.refs[b] == 0)
        new = self.blocks_needed(len(tokens)) - len(hits)
        return new <= free, new + headroom <= free

    def admit(self, table: BlockTable, tokens: Sequence[int]) -> None:
        """Give an empty table the prompt's cached prefix blocks and new blocks for the rest (check `fits` first)."""
        hits = self.match_prefix(tokens)
        for b, key in hits:
            self.pool.share(b)
            self.pool.hits += 1
            table.blocks.append(b)
            table.keys.append(key)
        table.cached = len(hits) * self.block_size
        self.grow(table, len(tokens))

    def grow(self, table: BlockTable, n_tokens: int) -> None:
        """Allocate blocks until the table holds `n_tokens` tokens; raises NoFreeBlocks (having taken none) if the
        pool cannot give them all."""
        need = self.blocks_needed(n_tokens) - len(table.blocks)
        if need > self.pool.num_free():
            raise NoFreeBlocks(f"all {self.pool.num_blocks} KV blocks are in use")
        for _ in range(need):
            table.blocks.append(self.pool.allocate())

    def fork(self, parent: BlockTable, child: BlockTable, copy_block: Callable[[int, int, int], None]) -> None:
        """child shares parent's full blocks; a partial last block is copied with `copy_block(src, dst, n)` (it
        will be written apart). Raises NoFreeBlocks, having taken nothing, if that copy has no block."""
        full = parent.cached // self.block_size
        rest = parent.cached - full * self.block_size
        if rest and self.pool.num_free() == 0:
            raise NoFreeBlocks(f"all {self.pool.num_blocks} KV blocks are in use")
        child.blocks = list(parent.blocks[:full])
        child.keys = list(parent.keys)
        for b in child.blocks:
            self.pool.share(b)
        if rest:
            b = self.pool.allocate()
            copy_block(parent.blocks[full], b, rest)
            child.blocks.append(b)
        child.cached = parent.cached

    def register_full_blocks(self, table: BlockTable, tokens: Sequence[int]) -> None:
        """Key every full block past the keyed ones, so later prompts with the same prefix may share it."""
        bs = self.block_size
        for i in range(len(table.keys), table.cached // bs):
            key = block_hash(table.keys[-1] if table.keys else None, tokens[i * bs:(i + 1) * bs])
            table.keys.append(key)
            self.pool.register(table.blocks[i], key)

    def free(self, table: BlockTable) -> None:
        """Give the table's blocks back and empty it (its tokens must be recomputed to use it again)."""
        # In reverse, so that the free list hands the same blocks out again in ascending order: a lone sequence
        # on consecutive blocks reads its keys in place (paged_cache.PagedBatch).
        for b in reversed(table.blocks):
            self.pool.release(b)
        table.blocks, table.keys, table.cached = [], [], 0
