"""KVCacheManager block accounting and the Sequence bookkeeping it relies on (pure Python)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_service.errors import InvalidRequest
from runtime_service.engine.kv_cache import KVCacheManager, blocks_for_tokens
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.engine.sequence import Sequence, SequenceStatus


def make_seq(request_id="r", prompt_len=4, max_new_tokens=8, max_seq_len=1024, seed=None):
    request = Request(request_id, list(range(1, prompt_len + 1)),
                      SamplingParams(max_new_tokens=max_new_tokens, seed=seed))
    return Sequence(request, max_seq_len)


def owned_blocks(seqs):
    return [b for s in seqs for b in s.block_ids]


@pytest.mark.parametrize("tokens, block_size, blocks", [
    (0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (8, 4, 2), (9, 4, 3), (7, 1, 7), (3, 16, 1),
])
def test_blocks_for_tokens_rounds_up(tokens, block_size, blocks):
    assert blocks_for_tokens(tokens, block_size) == blocks


@pytest.mark.parametrize("num_blocks, block_size", [(0, 4), (4, 0), (-1, 4)])
def test_empty_pool_or_zero_block_size_is_rejected(num_blocks, block_size):
    with pytest.raises(InvalidRequest, match="block"):
        KVCacheManager(num_blocks, block_size)


def test_allocate_grows_block_table_only_when_a_block_boundary_is_crossed():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    seq = make_seq(prompt_len=5)
    assert kv.num_new_blocks(seq, 5) == 2
    assert kv.allocate(seq, 5)
    assert len(seq.block_ids) == 2 and kv.num_free_blocks == 6
    seq.num_computed_tokens = 5
    assert kv.num_new_blocks(seq, 3) == 0          # 8 tokens still fit in 2 blocks
    assert kv.allocate(seq, 3)
    assert len(seq.block_ids) == 2 and kv.num_free_blocks == 6
    assert kv.num_new_blocks(seq, 4) == 1          # 9 tokens need a third
    assert kv.allocate(seq, 4)
    assert len(seq.block_ids) == 3 and kv.num_free_blocks == 5


def test_allocate_fails_without_side_effects_when_pool_is_short():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    seq = make_seq(prompt_len=9)
    assert not kv.allocate(seq, 9)
    assert seq.block_ids == []
    assert kv.num_free_blocks == 2
    assert kv.num_live_sequences == 0


def test_partial_growth_failure_keeps_existing_blocks():
    kv = KVCacheManager(num_blocks=3, block_size=2)
    seq = make_seq(prompt_len=4)
    assert kv.allocate(seq, 4)
    before = list(seq.block_ids)
    seq.num_computed_tokens = 4
    assert not kv.allocate(seq, 4)                 # needs 2 more, only 1 free
    assert seq.block_ids == before
    assert kv.num_free_blocks == 1


def test_sequences_get_disjoint_blocks():
    kv = KVCacheManager(num_blocks=6, block_size=2)
    a, b, c = make_seq("a"), make_seq("b"), make_seq("c")
    for seq in (a, b, c):
        assert kv.allocate(seq, 4)
    blocks = owned_blocks([a, b, c])
    assert sorted(blocks) == list(range(6))
    assert kv.num_free_blocks == 0
    assert not kv.allocate(make_seq("d"), 1)


def test_free_returns_blocks_and_is_idempotent():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    a, b = make_seq("a"), make_seq("b")
    kv.allocate(a, 3)
    kv.allocate(b, 2)
    assert kv.num_live_sequences == 2
    kv.free(a)
    assert a.block_ids == [] and kv.num_free_blocks == 3 and kv.num_live_sequences == 1
    kv.free(a)
    assert kv.num_free_blocks == 3 and kv.num_live_sequences == 1
    kv.free(b)
    assert kv.num_free_blocks == 4 and kv.num_live_sequences == 0


def test_freed_blocks_are_reused_by_later_sequences():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    first = make_seq("first")
    assert kv.allocate(first, 12)
    kv.free(first)
    second = make_seq("second")
    assert kv.allocate(second, 12)
    assert sorted(second.block_ids) == [0, 1, 2]


def test_zero_block_allocation_does_not_make_a_sequence_live():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    seq = make_seq()
    assert kv.allocate(seq, 0)
    assert kv.num_live_sequences == 0 and seq.block_ids == []


@settings(max_examples=100, deadline=None)
@given(num_blocks=st.integers(1, 12), block_size=st.integers(1, 4),
       ops=st.lists(st.tuples(st.sampled_from(["grow", "free"]), st.integers(0, 4),
                              st.integers(1, 7)), max_size=40))
def test_random_allocations_never_leak_or_double_own_blocks(num_blocks, block_size, ops):
    kv = KVCacheManager(num_blocks, block_size)
    seqs = [make_seq(f"s{i}") for i in range(5)]
    for op, index, num_tokens in ops:
        seq = seqs[index]
        if op == "free":
            kv.free(seq)
            seq.num_computed_tokens = 0
            continue
        free_before, blocks_before = kv.num_free_blocks, list(seq.block_ids)
        needed = kv.num_new_blocks(seq, num_tokens)
        if kv.allocate(seq, num_tokens):
            assert len(seq.block_ids) == len(blocks_before) + needed
            assert len(seq.block_ids) * block_size >= seq.num_computed_tokens + num_tokens
            seq.num_computed_tokens += num_tokens
        else:
            assert needed > free_before
            assert seq.block_ids == blocks_before and kv.num_free_blocks == free_before
        owned = owned_blocks(seqs)
        assert len(owned) == len(set(owned))
        assert set(owned) <= set(range(num_blocks))
        assert kv.num_free_blocks + len(owned) == num_blocks
        assert kv.num_live_sequences == sum(1 for s in seqs if s.block_ids)
    for seq in seqs:
        kv.free(seq)
    assert kv.num_free_blocks == num_blocks and kv.num_live_sequences == 0


def test_sequence_total_length_is_capped_by_max_seq_len():
    assert make_seq(prompt_len=5, max_new_tokens=10).max_total_tokens == 15
    assert make_seq(prompt_len=5, max_new_tokens=10, max_seq_len=12).max_total_tokens == 12


def test_sequence_counts_prompt_output_and_uncomputed_tokens():
    seq = make_seq(prompt_len=3)
    assert seq.status is SequenceStatus.WAITING
    assert (seq.num_tokens, seq.num_output_tokens, seq.num_uncomputed_tokens) == (3, 0, 3)
    seq.num_computed_tokens = 3
    seq.token_ids.append(42)
    assert seq.output_token_ids == [42]
    assert (seq.num_tokens, seq.num_output_tokens, seq.num_uncomputed_tokens) == (4, 1, 1)


def test_sequence_copies_the_prompt():
    request = Request("r", [1, 2, 3])
    seq = Sequence(request, 64)
    seq.token_ids.append(9)
    assert request.prompt_token_ids == [1, 2, 3]
    assert seq.num_prompt_tokens == 3


def test_sequence_seed_comes_from_request_or_is_random():
    assert make_seq(seed=1234).seed == 1234
    unseeded = {make_seq().seed for _ in range(8)}
    assert len(unseeded) == 8
