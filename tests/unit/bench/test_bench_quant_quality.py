"""bench/bench_quant_quality.py runs its llmcompressor peers in their own environment once per
calibration set, and judges Kiln's rows against the peer of the same run (no llmcompressor or
model needed: a stand-in plays the peer's Python)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import bench_quant_quality as quality  # noqa: E402

# Stands in for the peer environment's Python: records each call, makes the folder that
# `--out` names, and prints the JSON line peer_llmcompressor.py prints (or fails when asked).
FAKE_PEER = """#!/usr/bin/env python3
import json, pathlib, sys
args = sys.argv[2:]
log = pathlib.Path(__file__).with_name("calls.jsonl")
with log.open("a") as f:
    f.write(json.dumps(args) + "\\n")
if pathlib.Path(__file__).with_name("fail").exists():
    sys.exit("peer exploded")
out = pathlib.Path(args[args.index("--out") + 1])
out.mkdir(parents=True)
(out / "config.json").write_text("{}")
print("progress noise")
print(json.dumps({"scheme": args[args.index("--scheme") + 1], "seconds": 1.5}))
"""


@pytest.fixture
def fake_peer(tmp_path: Path) -> Path:
    python = tmp_path / "peer" / "python"
    python.parent.mkdir()
    python.write_text(FAKE_PEER)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return python


def calls(python: Path) -> list[list[str]]:
    log = python.with_name("calls.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_peer_checkpoint_is_made_once_per_calibration_set(fake_peer, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    windows = [[1, 2, 3], [4, 5, 6]]
    folder, run = quality.llmcompressor_folder(fake_peer, "awq", tmp_path, work, windows)
    assert (folder / "config.json").is_file() and run == {"scheme": "awq", "seconds": 1.5}
    (args,) = calls(fake_peer)
    assert args[:3] == ["quantize", "--scheme", "awq"]
    assert json.loads(Path(args[args.index("--calib") + 1]).read_text()) == windows

    again, run_again = quality.llmcompressor_folder(fake_peer, "awq", tmp_path, work, windows)
    assert (again, run_again) == (folder, run) and len(calls(fake_peer)) == 1

    other, _ = quality.llmcompressor_folder(fake_peer, "awq", tmp_path, work, [[7, 8, 9]])
    assert other != folder and len(calls(fake_peer)) == 2


def test_a_failed_peer_says_why_and_leaves_no_checkpoint_to_reuse(fake_peer, tmp_path):
    fake_peer.with_name("fail").touch()
    with pytest.raises(RuntimeError, match="peer exploded"):
        quality.llmcompressor_folder(fake_peer, "gptq", tmp_path, tmp_path, [[1, 2]])
    assert not list(tmp_path.glob("llmcompressor-gptq-*"))      # nothing half-made left

    with pytest.raises(FileNotFoundError, match="make peer-venv"):
        quality.run_peer(tmp_path / "no-such-python", "score")


def test_kiln_rows_are_judged_against_the_peer_of_the_same_run():
    results = {"llmcompressor AWQ g64": {"perplexity": 12.5},
               "llmcompressor FP8_DYNAMIC": {"perplexity": 11.0}}
    assert quality.verdict("W4A16_AWQ g64", 12.4, 11.0, results).startswith("ok")
    assert quality.verdict("W4A16_AWQ g64", 12.6, 11.0, results).startswith("MISSED")
    assert quality.verdict("FP8", 11.0, 10.6, results).startswith("ok")
    # without the peer in this run, the quoted increase over fp32 is the mark
    assert quality.verdict("W4A16_AWQ g64", 12.6, 11.0, {}).startswith("ok")      # +14.5%
    assert quality.verdict("W4A16_AWQ g64", 12.7, 11.0, {}).startswith("MISSED")  # +15.5%
