"""The KV block pool (engine/blocks.py) and the block tables over it (engine/kv_manager.py), without a model: the
chained prefix hash by hand, argument checks, hit and use counters, registration rules, prefix matching at the
block boundary, admission counting, the key chain of admitted and registered tables, and freeing."""

from __future__ import annotations

import hashlib

import pytest

from scratchlm.engine.blocks import BlockPool, NoFreeBlocks, block_hash
from scratchlm.engine.kv_manager import KVManager
from scratchlm.engine.request import BlockTable


def test_block_hash_is_the_documented_sha256_chain():
    first = hashlib.sha256(b"root" + b"1,23,4").digest()  # no parent: seeded with b"root"; ids joined by ","
    assert block_hash(None, [1, 23, 4]) == first
    assert block_hash(first, [7]) == hashlib.sha256(first + b"7").digest()
    assert block_hash(None, [12, 3, 4]) != first  # the separator keeps (1, 23) and (12, 3) apart


@pytest.mark.parametrize("n, size", [(0, 4), (3, 0), (-1, -1)])
def test_pool_needs_at_least_one_block_of_one_slot(n, size):
    with pytest.raises(ValueError) as e:
        BlockPool(n, size)
    assert str(e.value) == f"BlockPool: num_blocks={n} and block_size={size} must be ≥ 1"


def test_smallest_pool_counts_and_says_why_it_is_full():
    pool = BlockPool(1, 1)
    assert (pool.num_free(), pool.num_used()) == (1, 0)
    b = pool.allocate()
    assert (pool.num_free(), pool.num_used()) == (0, 1)
    with pytest.raises(NoFreeBlocks) as e:
        pool.allocate()
    assert str(e.value) == "all 1 KV blocks are in use"
    pool.release(b)
    assert pool.num_used() == 0


def test_lookup_counts_each_hit_once():
    pool = BlockPool(4, 2)
    b = pool.allocate()
    key = block_hash(None, [1, 2])
    pool.register(b, key)
    assert pool.lookup(block_hash(None, [9, 9])) is None and pool.hits == 0  # a miss is not a hit
    assert pool.lookup(key) == b and pool.lookup(key) == b
    assert pool.hits == 2 and pool.refs[b] == 3 and pool.num_used() == 1


def test_register_keeps_the_first_key_of_a_block_and_the_first_block_of_a_key():
    pool = BlockPool(4, 2)
    a, b = pool.allocate(), pool.allocate()
    k1, k2 = block_hash(None, [1, 2]), block_hash(None, [3, 4])
    pool.register(a, k1)
    pool.register(a, k2)  # a block is keyed once
    pool.register(b, k1)  # an equal block computed twice stays private to its sequence
    assert pool.hash_of == {a: k1} and pool.by_hash == {k1: a}
    assert pool.lookup(k2) is None and pool.lookup(k1) == a
    pool.release(b)
    assert b in pool.free_ids and b not in pool.evictable  # unkeyed: straight back to the free list


def test_without_prefix_caching_nothing_is_registered_or_found():
    pool = BlockPool(2, 2, prefix_caching=False)
    b = pool.allocate()
    key = block_hash(None, [1, 2])
    pool.register(b, key)
    assert pool.hash_of == {} and pool.by_hash == {} and pool.lookup(key) is None
    pool.release(b)
    assert pool.free_ids == [1, 0] and not pool.evictable
    kv = KVManager(2, 2, prefix_caching=False)
    assert kv.match_prefix([1, 2, 3]) == []


def test_match_prefix_leaves_the_last_token_to_compute():
    kv = KVManager(num_blocks=8, block_size=4)
    toks = [5, 6, 7, 8, 9]
    t = BlockTable()
    kv.admit(t, toks)
    t.cached = 4
    kv.register_full_blocks(t, toks)
    assert [b for b, _ in kv.match_prefix(toks)] == [t.blocks[0]]  # 5 tokens: the full first block is a hit
    assert kv.match_prefix(toks[:4]) == []  # 4 tokens: all in one block, but its last token is recomputed


def test_fits_counts_blocks_exactly_at_the_limit():
    kv = KVManager(num_blocks=4, block_size=2)
    assert kv.fits(list(range(8))) == (True, True)  # 4 blocks of 4 free, no headroom asked
    assert kv.fits(list(range(8)), headroom=1) == (True, False)
    assert kv.fits(list(range(6)), headroom=1) == (True, True)  # 3 + 1 == 4
    # two cached blocks that nobody holds: they count as free until taken, once each
    t = BlockTable()
    toks = [1, 2, 3, 4, 5]
    kv.admit(t, toks)  # 3 blocks
    t.cached = 4
    kv.register_full_blocks(t, toks)
    kv.free(t)  # blocks 0, 1 evictable (keyed), 2 free
    assert kv.pool.num_free() == 4
    # 8 tokens: its 2 cached blocks are hits and it needs 2 new ones; 4 free − 2 (the hits) = 2 left: fits exactly.
    # 9 tokens need 3 new ones: no
    assert kv.fits([1, 2, 3, 4, 5, 6, 7, 8]) == (True, True)
    assert kv.fits([1, 2, 3, 4, 5, 6, 7, 8, 9]) == (False, False)


def test_admitted_and_registered_tables_carry_the_key_chain():
    kv = KVManager(num_blocks=8, block_size=2)
    toks = [1, 2, 3, 4, 5, 6, 7]
    k0 = block_hash(None, [1, 2])
    k1 = block_hash(k0, [3, 4])
    k2 = block_hash(k1, [5, 6])
    first = BlockTable()
    kv.admit(first, toks)
    first.cached = 4
    kv.register_full_blocks(first, toks)
    assert first.keys == [k0, k1]
    first.cached = 7
    kv.register_full_blocks(first, toks)  # only the newly full block is added
    assert first.keys == [k0, k1, k2]
    second = BlockTable()
    kv.admit(second, toks + [8])  # 8 tokens: the first three blocks are hits
    assert second.keys == [k0, k1, k2] and second.cached == 6
    second.cached = 8
    kv.register_full_blocks(second, toks + [8])
    assert second.keys[3] == block_hash(k2, [7, 8])  # the chain goes on from the admitted keys
    kv.free(second)
    assert (second.blocks, second.keys, second.cached) == ([], [], 0)


def test_grow_and_fork_say_why_they_fail():
    kv = KVManager(num_blocks=2, block_size=2)
    with pytest.raises(NoFreeBlocks) as e:
        kv.grow(BlockTable(), 5)
    assert str(e.value) == "all 2 KV blocks are in use"
    t = BlockTable()
    kv.grow(t, 4)
    t.cached = 3
    with pytest.raises(NoFreeBlocks) as e:
        kv.fork(t, BlockTable(), lambda *a: None)
    assert str(e.value) == "all 2 KV blocks are in use"
