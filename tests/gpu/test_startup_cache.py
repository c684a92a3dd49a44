"""A second start of the same engine on the same GPU model tunes nothing: the first start's GEMV
choices come back from the pod's cache directory. A pod on another node compiles nothing either:
the first pod's compiled kernels come back from the store."""

from __future__ import annotations

import shutil
import tarfile
import time

import pytest

from runtime_service.engine.executor import ExecutorOptions
from runtime_service.server.engine_host import RuntimeSettings
from runtime_service.server.engine_start import start_engine
from runtime_service.server.startup_report import StartupReport
from runtime_service.server import kernel_cache
from support.kiln_servers import RuntimePod, build_engine
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


def test_a_pod_on_a_fresh_node_takes_the_compiled_kernels_from_the_store(tmp_path):
    model = make_random_llama(tmp_path / "model", hidden_size=128, intermediate_size=256,
                              num_attention_heads=2, num_key_value_heads=1,
                              num_hidden_layers=2, vocab_size=256)
    ref = build_engine(model, tmp_path / "store", "--target-device", "cuda", "--dtype",
                       "bfloat16", "--max-batch-size", "4", "--max-input-len", "64",
                       "--max-seq-len", "128", "--max-num-tokens", "64")
    engine = tmp_path / "store" / "engines" / ref["engine_key"]

    def pod(node: str) -> RuntimePod:
        (tmp_path / node).mkdir()
        return RuntimePod(tmp_path / node, str(engine), "--device", "cuda",
                          "--share-startup-cache",
                          env={kernel_cache.ENV: str(tmp_path / node / "kernels")})

    first = pod("node1")
    try:
        first.wait_serving(timeout_s=600)
        deadline = time.monotonic() + 120             # it packs on a thread once serving
        while not list((engine / "startup").glob("*-kernels-triton-*.tar.gz")):
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.5)
    finally:
        first.stop()
    archive = next((engine / "startup").glob("*-kernels-triton-*.tar.gz"))
    with tarfile.open(archive) as packed:
        names = packed.getnames()
    shared = {name for name in names if name.endswith(".cubin")}
    assert shared and not any(name.endswith(".so") for name in names)
    # Another node has no node1 folder. Triton's group files named node1's paths, so a second
    # node that could still read them hid a full recompile on a real fresh node (run 18).
    shutil.rmtree(tmp_path / "node1" / "kernels")
    second = pod("node2")
    try:
        second.wait_serving(timeout_s=600)
    finally:
        second.stop()
    log = second.log_path.read_text(errors="replace")
    assert "compiled kernel files from the store" in log, log[-4000:]
    startup = [line for line in log.splitlines() if " startup total_s=" in line][-1]
    fields = StartupReport.parse_log_line(startup)
    assert fields["kernel_files_from_store"] > 0 and fields["kernels_compiled"] == 0
    node2 = tmp_path / "node2" / "kernels"
    compiled = {p.relative_to(node2).as_posix() for p in node2.glob("*/*.cubin")}
    assert compiled == shared           # it compiled nothing of its own
