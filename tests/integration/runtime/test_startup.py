"""A pod's start-up, timed by phase and logged in one line (in-process, on the tiny engine)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from runtime_service.engine.executor import ExecutorOptions
from runtime_service.server.engine_host import RuntimeSettings
from runtime_service.server.engine_start import start_engine
from runtime_service.server.startup_report import PHASES, StartupReport

REPO = Path(__file__).resolve().parents[3]


def test_a_start_reports_every_phase_and_logs_it(tiny_engine, tmp_path, caplog):
    settings = RuntimeSettings(cache_dir=tmp_path / "cache",
                               executor=ExecutorOptions(kv_max_tokens=256))
    with caplog.at_level(logging.INFO, logger="kiln.runtime"):
        started = start_engine(tiny_engine["uri"], settings, imports_s=1.0)
    try:
        seconds = dict(started.report.seconds)
        assert seconds["imports"] >= 1.0
        assert seconds["verify"] > 0 and seconds["pull"] == 0   # a local engine is verified in place
        assert seconds["load"] > 0 and seconds["warm_up"] > 0
        assert started.report.tuned_shapes == 0 and started.report.pulled_bytes == 0
        assert started.executor.stats().num_live_requests == 0
    finally:
        started.executor.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("startup ")]
    assert len(lines) == 1
    fields = StartupReport.parse_log_line(lines[0])
    assert {f"{name}_s" for name in PHASES} <= set(fields)
    assert fields["total_s"] == round(started.report.total_s, 3)
    assert fields["compile_workers"] == 0           # on the CPU nothing compiles


def test_the_engine_core_decodes_with_the_engines_saved_decoder_not_transformers(
        tiny_engine, tiny_model, tmp_path):
    """The core only decodes: it loads the builder's saved decoder (engine/token_decoder.py)
    and never imports transformers, whose import held a fresh node's start for seconds. Run in
    a process of its own, since this one has imported transformers long ago."""
    from runtime_service.engine.tokenizer_load import load_tokenizer

    reference = load_tokenizer(tiny_model)
    ids = reference("Hello, world! ¿Qué tal? 日本語")["input_ids"] + [reference.eos_token_id]
    script = f"""
import json, sys
from runtime_service.engine.executor import ExecutorOptions
from runtime_service.engine.token_decoder import TokenDecoder
from runtime_service.server.engine_host import RuntimeSettings
from runtime_service.server.engine_start import start_engine
settings = RuntimeSettings(cache_dir={str(tmp_path / "cache")!r},
                           executor=ExecutorOptions(kv_max_tokens=256))
started = start_engine({tiny_engine["uri"]!r}, settings)
try:
    tokenizer = started.executor.tokenizer
    print(json.dumps([type(tokenizer).__name__,
                      tokenizer.decode({ids!r}, skip_special_tokens=True),
                      tokenizer.decode({ids!r}, skip_special_tokens=False),
                      "transformers" in sys.modules]))
finally:
    started.executor.shutdown()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [
        "TokenDecoder", reference.decode(ids, skip_special_tokens=True),
        reference.decode(ids, skip_special_tokens=False), False]
