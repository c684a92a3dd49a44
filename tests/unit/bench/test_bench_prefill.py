"""bench_prefill.py on the CPU: every row of the table comes from the same run, one figure per
prompt length, and the JSON and the host profile are written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import bench_prefill  # noqa: E402


def test_prefill_rows_for_every_length_on_the_tiny_shape(tmp_path, capsys):
    out = tmp_path / "prefill.json"
    assert bench_prefill.main(["--model", "tiny", "--device", "cpu", "--lengths", "8,40",
                               "--graph-tokens", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["rows"]) == {"cuBLAS floor", "HF transformers", "Kiln eager"}
    for figures in report["rows"].values():
        assert set(figures) == {"8", "40"} and all(ms > 0 for ms in figures.values())
    assert "TTFT 40 under cProfile" in (tmp_path / "prefill_host.txt").read_text()
    assert "| Kiln eager |" in capsys.readouterr().out
