"""A pod's start-up, timed by phase and logged in one line (in-process, on the tiny engine)."""

import logging

from runtime_service.engine.executor import ExecutorOptions
from runtime_service.server.engine_host import RuntimeSettings
from runtime_service.server.engine_start import start_engine
from runtime_service.server.startup_report import PHASES, StartupReport


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
