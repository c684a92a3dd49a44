"""bench_decode.py --quant on the CPU: the quantized engines the next GPU session measures are
built from the bf16 engine's weights, run batch-1 and the loads, and report the bytes they read."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import bench_decode  # noqa: E402
import decode_profiles  # noqa: E402
from quant_engine import QuantVariant, variants_for  # noqa: E402


def test_quant_flags_name_the_engines_and_refuse_unknown_algorithms():
    assert [v.name for v in variants_for("w4a16_awq,FP8", 64, "FP8")] == [
        "W4A16_AWQ g64 + KV FP8", "FP8 + KV FP8"]
    assert variants_for("", 128, "INT8") == [QuantVariant("NONE", 128, "int8")]
    assert variants_for("", 128, "NONE") == []
    with pytest.raises(ValueError, match="W4A16_AWQ, W4A16, W8A16, FP8"):
        variants_for("W4A8_AWQ", 128, "NONE")


@pytest.mark.slow
def test_quantized_engines_run_beside_the_bf16_one_on_the_tiny_shape(tmp_path, capsys):
    out = tmp_path / "quant.json"
    assert bench_decode.main(["--model", "tiny", "--device", "cpu", "--quick", "--skip-hf",
                              "--skip-reference", "--loads", "2x16/8", "--quant",
                              "W4A16_AWQ,FP8", "--kv-quant", "INT8", "--ttft-idle-s", "0",
                              "--profile", str(tmp_path / "prof" / "p.txt"),
                              "--profile-batches", "1,3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kiln"]["ttft_idle_ms"].keys() == report["kiln"]["ttft_ms"].keys()
    bf16_bytes = report["weight_bytes_read_per_token"]
    engines = report["quantized"]
    assert set(engines) == {"W4A16_AWQ g128 + KV INT8", "FP8 + KV INT8"}
    for figures in engines.values():
        assert figures["tpot_ms_batch1"] > 0
        assert figures["throughput"]["2x16/8"]["output_tokens_per_s"] > 0
        assert figures["throughput"]["2x16/8"]["prefill_alone_s"] > 0
        assert figures["weight_bytes_read_per_token"] < bf16_bytes
    assert "round-to-nearest" in engines["W4A16_AWQ g128 + KV INT8"]["note"]
    assert "W4A16_AWQ g128 + KV INT8: batch-1" in capsys.readouterr().out
    # a decode table per engine and batch, over at least the 24 steps it waited for
    for engine in ("", "_FP8_KV_INT8", "_W4A16_AWQ_g128_KV_INT8"):
        for batch in (1, 3):
            table = (tmp_path / "prof" / f"p{engine}_b{batch}.txt").read_text()
            head = re.match(rf"(\d+) decode steps at batch {batch} after 128-token prompts",
                            table)
            assert head and int(head.group(1)) >= decode_profiles.PROFILE_STEPS
        # and the largest batch's prefill alone, in the steps it took
        table = (tmp_path / "prof" / f"p{engine}_prefill_b3.txt").read_text()
        head = re.match(r"prefill of 3 x 128-token prompts in (\d+) steps", table)
        assert head and int(head.group(1)) >= 1
