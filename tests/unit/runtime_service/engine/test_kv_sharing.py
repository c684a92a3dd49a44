"""Shared blocks: reference counts, copy on write after fork, and eviction of cached prefixes."""

from __future__ import annotations

from runtime_service.engine.kv_cache import KVCacheManager
from runtime_service.engine.request import Request
from runtime_service.engine.sequence import Sequence


def _seq(name, tokens, salt=""):
    return Sequence(Request(name, list(tokens), cache_salt=salt), max_seq_len=1024)


def test_fork_shares_blocks_and_first_write_copies_the_partial_block():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    parent = _seq("p", range(6))
    assert kv.allocate(parent, 6)
    parent.num_computed_tokens = 6
    child = _seq("c", range(6))
    child.num_computed_tokens = 6
    kv.fork(parent, child)
    assert child.block_ids == parent.block_ids
    assert [kv.ref_count(b) for b in parent.block_ids] == [2, 2]
    assert kv.num_free_blocks == 6
    assert kv.allocate(child, 1)                         # writes position 6, in shared block 1
    assert child.block_ids[0] == parent.block_ids[0]
    assert child.block_ids[1] != parent.block_ids[1]
    assert kv.take_pending_copies() == [(parent.block_ids[1], child.block_ids[1])]
    assert kv.ref_count(parent.block_ids[1]) == 1
    kv.free(parent)
    kv.free(child)
    assert kv.num_free_blocks == 8 and kv.num_live_sequences == 0


def test_allocation_that_cannot_fit_its_copies_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    parent = _seq("p", range(6))
    kv.allocate(parent, 6)
    parent.num_computed_tokens = 6
    child = _seq("c", range(6))
    child.num_computed_tokens = 6
    kv.fork(parent, child)
    assert not kv.allocate(child, 1)
    assert child.block_ids == parent.block_ids and kv.take_pending_copies() == []


def test_cached_prefix_survives_free_until_the_pool_needs_it():
    kv = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_reuse=True)
    first = _seq("a", range(9))
    kv.allocate(first, 9)
    first.num_computed_tokens = 9
    kv.register_computed_blocks(first)
    kv.free(first)
    again = _seq("b", range(9))
    assert kv.claim_cached_prefix(again) == 8
    kv.free(again)
    hog = _seq("hog", range(100, 116))
    assert kv.allocate(hog, 16)                          # takes every block, evicting the cache
    kv.free(hog)
    late = _seq("c", range(9))
    assert kv.claim_cached_prefix(late) == 0


def test_blank_blocks_are_handed_out_before_cached_ones():
    kv = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_reuse=True)
    first = _seq("a", range(5))
    kv.allocate(first, 5)
    first.num_computed_tokens = 5
    kv.register_computed_blocks(first)
    kv.free(first)
    other = _seq("b", range(50, 54))
    kv.allocate(other, 4)
    kv.free(other)
    assert kv.claim_cached_prefix(_seq("c", range(5))) == 4
