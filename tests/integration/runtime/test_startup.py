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


def test_on_a_fresh_node_the_tokenizer_loads_once_the_recording_pass_ends(
        tiny_engine, tmp_path, monkeypatch):
    """With compile workers that the capture's kernels are recorded for (an empty kernel cache:
    a fresh node) the engine's tokenizer load, which competes for the GIL, waits through the
    weight load for the end of the recording pass; without them it begins with the load. The CPU records nothing, so the pass's
    end is played here from inside the executor's construction, where the capture runs it."""
    from runtime_service.engine import executor as executor_module
    from runtime_service.engine.tokenizer_load import TokenizerLoad
    from runtime_service.model import kernel_tuning
    from runtime_service.model.kernels import compile_ahead
    from runtime_service.server import engine_start

    seen = []
    real_init = executor_module.Executor.__init__

    def building(self, loaded, options, *args, tokenizer_load=None, **kwargs):
        assert isinstance(tokenizer_load, TokenizerLoad)
        seen.append(("before the recording ends", tokenizer_load.begun))
        compile_ahead._recording_ended()
        seen.append(("after it", tokenizer_load.begun))
        real_init(self, loaded, options, *args, tokenizer_load=tokenizer_load, **kwargs)

    for workers in (2, 0):
        seen.clear()
        monkeypatch.setattr(kernel_tuning, "start_compile_workers", lambda device: workers)
        monkeypatch.setattr(engine_start.kernel_cache, "holds_kernels", lambda folder: False)
        monkeypatch.setattr(compile_ahead, "enabled", lambda: workers > 0)
        monkeypatch.setattr(executor_module.Executor, "__init__", building)
        settings = RuntimeSettings(cache_dir=tmp_path / f"cache{workers}",
                                   executor=ExecutorOptions(kv_max_tokens=256))
        started = start_engine(tiny_engine["uri"], settings)
        try:
            assert isinstance(started.executor.tokenizer.decode([3, 4]), str)
        finally:
            started.executor.shutdown()
        assert seen == [("before the recording ends", workers == 0), ("after it", True)]
