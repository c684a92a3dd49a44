"""bench_prefill_attention.py's arithmetic and table on the CPU (the timing needs CUDA): the
causal work it divides by, and rows whose peer could not run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import bench_prefill_attention as bench  # noqa: E402


def test_causal_flops_count_each_row_over_its_context_and_the_rows_up_to_its_own():
    head_dim, heads = bench.HEAD_DIM, 2
    # 3 new rows after 5 cached keys: rows see 6, 7 and 8 keys
    assert bench.causal_flops(1, 3, 5, heads) == 4 * head_dim * heads * (6 + 7 + 8)
    assert bench.causal_flops(4, 3, 0, heads) == 4 * 4 * head_dim * heads * (1 + 2 + 3)


def test_the_table_shows_a_missing_peer_as_a_dash_and_rates_the_rest():
    case = {"model": "llama3-8b", "num_seqs": 1, "new_tokens": 1024, "context": 0,
            "flops": 2_000_000_000, "sdpa_us": None, "kiln_default_us": 40.0,
            "kiln_default_config": "m64 n64 w4 s2 heavy-first"}
    table = bench.table({"device_name": "GPU", "cases": [case]})
    row = table.splitlines()[-1].split()
    assert row[:5] == ["llama3-8b", "1", "x", "1024", "0"]
    assert row[5:7] == ["-", "-"]                       # SDPA and its rate
    assert row[7:9] == ["40.0", "50"]                   # 2 GFLOP in 40 us = 50 TFLOP/s
    assert row[10:12] == ["-", "-"]                     # flash prefill not timed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_says_so_and_exits_2(capsys):
    assert bench.main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
