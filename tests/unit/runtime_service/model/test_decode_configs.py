"""Decode attention's default launch shapes (kernels/attention_configs.py), as measured in
bench/NOTES.md runs 25b-25d: a launch that fills the GPU three times over without splitting takes
splits of at least 256 keys, and with grouped heads over an 8-bit cache the narrow tiles; any
smaller launch (batch 1) keeps the shapes that won there."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from runtime_service.model.kernels.attention_configs import (  # noqa: E402
    FULL_LAUNCH_8BIT, FULL_LAUNCH_MIN_SPLIT_KEYS, FULL_LAUNCH_PROGRAMS_PER_SM, DecodeConfig,
    default_decode_config)

SMS = 132
FULL = FULL_LAUNCH_PROGRAMS_PER_SM * SMS


@pytest.mark.parametrize("group", [1, 4])
def test_a_launch_short_of_full_keeps_splits_of_any_length(group):
    for eight_bit in (False, True):
        config = default_decode_config(group, 128, FULL - 1, SMS, eight_bit)
        assert config.min_split_keys == 0
        assert config == default_decode_config(group, 128, eight_bit=eight_bit)


def test_a_full_launch_takes_long_splits_over_a_16_bit_cache():
    config = default_decode_config(4, 128, FULL, SMS)
    assert config.min_split_keys == FULL_LAUNCH_MIN_SPLIT_KEYS
    assert (config.block_n, config.num_warps) == (64, 4)


def test_a_full_launch_of_grouped_heads_over_an_8_bit_cache_takes_the_narrow_tiles():
    assert default_decode_config(4, 128, FULL, SMS, eight_bit=True) == DecodeConfig(
        **FULL_LAUNCH_8BIT)
    # not measured: one query head per kv head, or heads past 128 dims
    assert default_decode_config(1, 128, FULL, SMS, eight_bit=True).block_n == 16
    assert default_decode_config(4, 256, FULL, SMS, eight_bit=True).block_n == 32


def test_the_fewest_keys_a_split_takes_is_checked():
    with pytest.raises(ValueError, match="min_split_keys"):
        DecodeConfig(min_split_keys=-1)
    assert str(DecodeConfig(min_split_keys=256)) == "n64 w4 s2 min256"
