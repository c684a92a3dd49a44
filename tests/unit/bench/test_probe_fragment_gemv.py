"""bench/probe_fragment_gemv.py's weight packings (fp8 for mma.m16n8k32 and m16n8k16, int4 nibbles
for m16n8k16.bf16), on the CPU: the values each lane loads, placed where PTX's fragment layouts
put them, give W @ x; and x's 16-bit order puts each lane's four B registers side by side. A
packing off by a row, a column or a register fails here before any GPU time is spent on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import probe_fragment_gemv as probe  # noqa: E402


def test_both_packings_reproduce_the_product_through_the_fragment_layout():
    probe.check_packing()


@pytest.mark.parametrize("pack", [probe.pack_k32, probe.pack_k16, probe.pack_int4])
def test_a_packing_with_two_registers_swapped_is_caught(pack, monkeypatch):
    def swapped(w):
        packed = pack(w).clone()
        packed[..., :4], packed[..., 4:8] = pack(w)[..., 4:8], pack(w)[..., :4]
        return packed
    monkeypatch.setattr(probe, pack.__name__, swapped)
    with pytest.raises(AssertionError):
        probe.check_packing()


def test_shapes_that_are_not_whole_tiles_are_refused():
    with pytest.raises(ValueError, match="16-row, 32-column"):
        probe.pack_k16(torch.zeros(24, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="16-row, 64-column"):
        probe.pack_int4(torch.zeros(16, 96, dtype=torch.uint8))
