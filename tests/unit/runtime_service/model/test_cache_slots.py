"""cache_slots: the KV slots of a span of cache positions, block by block."""

from hypothesis import given
from hypothesis import strategies as st

from runtime_service.model.model_runner import cache_slots


@given(st.data(), st.sampled_from([1, 4, 16, 64]), st.integers(1, 40))
def test_cache_slots_equal_the_per_position_formula(data, block_size, num_blocks):
    block_ids = data.draw(st.lists(st.integers(0, 5000), min_size=num_blocks,
                                   max_size=num_blocks, unique=True))
    start = data.draw(st.integers(0, num_blocks * block_size))
    end = data.draw(st.integers(start, num_blocks * block_size))
    expected = [block_ids[p // block_size] * block_size + p % block_size
                for p in range(start, end)]
    assert cache_slots(block_ids, block_size, start, end) == expected


def test_an_empty_span_has_no_slots():
    assert cache_slots([7, 3], 16, 20, 20) == []
