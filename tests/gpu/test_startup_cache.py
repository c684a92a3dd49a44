"""A second start of the same engine on the same GPU model tunes nothing: the first start's GEMV
choices come back from the pod's cache directory."""

from __future__ import annotations

import pytest

from runtime_service.engine.executor import ExecutorOptions
from runtime_service.server.engine_host import RuntimeSettings
from runtime_service.server.engine_start import start_engine
from support.random_llama import make_random_llama

pytestmark = pytest.mark.gpu


def _start(folder, cache_dir):
    settings = RuntimeSettings(cache_dir=cache_dir, executor=ExecutorOptions(
        device="cuda", dtype="bfloat16", max_num_tokens=128, max_batch_size=4, kv_max_tokens=1024))
    started = start_engine(str(folder), settings)
    started.executor.shutdown()
    return started.report


def test_second_start_takes_the_cached_tuning(tmp_path):
    from runtime_service.model.kernels import gemv

    folder = make_random_llama(tmp_path / "model", hidden_size=192, intermediate_size=448,
                               num_attention_heads=3, num_key_value_heads=1,
                               num_hidden_layers=2, vocab_size=640)
    saved = dict(gemv._tuned)
    gemv._tuned.clear()            # as in a fresh process
    try:
        first = _start(folder, tmp_path / "cache")
        assert first.tuned_shapes > 0 and dict(first.seconds)["tuning"] > 0
        assert first.tuning_source == ""
        gemv._tuned.clear()
        second = _start(folder, tmp_path / "cache")
        assert second.tuned_shapes == 0 and dict(second.seconds)["tuning"] == 0
        assert second.tuning_source == "local"
        assert dict(second.seconds)["graph_capture"] > 0
    finally:
        gemv._tuned.clear()
        gemv._tuned.update(saved)
