"""Compiling a capture's kernels together before it runs (model/kernels/compile_ahead.py), on CUDA:
a recording pass launches and compiles nothing and records each kernel once; the recorded
kernels then compile on threads or in compile workers (kernels/compile_pool.py), after which the
same launches compile nothing and compute the right values; a tuner asked while recording
answers untimed and records its candidates; an engine started that way gives the tokens of a
normal start."""

from __future__ import annotations

from concurrent.futures import wait

import pytest
import torch

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.model.kernels import compile_ahead, compile_pool
from runtime_service.server.kernel_cache import CompileWatch, host_launchers
from gpu.tiers import LONG
from support.random_llama import make_random_llama, random_prompts

pytestmark = pytest.mark.gpu
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")


@triton.jit
def _scaled_copy(X, Out, n, SCALE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Out + offs, tl.load(X + offs, mask=offs < n) * SCALE, mask=offs < n)


def test_a_recording_pass_skips_kernels_and_their_compile_then_the_pool_compiles_them(
        tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    x = torch.arange(1000, dtype=torch.float32, device="cuda")
    scales = (3.0, 5.0)

    def forward(out, scale):
        _scaled_copy[(triton.cdiv(1000, 256),)](x, out, 1000, SCALE=scale, BLOCK=256)

    outs = [torch.full_like(x, -1.0) for _ in scales]
    recorded: dict = {}
    with CompileWatch() as watch, compile_ahead.skipping_compiles(recorded):
        assert compile_ahead.recording()
        for out, scale in zip(outs, scales):
            forward(out, scale)
            forward(out, scale)                 # the same kernel again: recorded once
    torch.cuda.synchronize()
    assert not compile_ahead.recording()
    assert watch.count == 0 and len(recorded) == 2
    assert all(bool((out == -1.0).all()) for out in outs), "a skipped kernel ran"
    assert compile_ahead.compile_recorded(recorded) == 2
    with CompileWatch() as watch:
        for out, scale in zip(outs, scales):
            forward(out, scale)
    torch.cuda.synchronize()
    assert watch.count == 0, watch.describe()
    for out, scale in zip(outs, scales):
        assert torch.equal(out, x * scale)


def _add_one(x, out, block):
    from support.tiny_kernels import add_one_kernel

    add_one_kernel[(triton.cdiv(x.numel(), block),)](x, out, x.numel(), BLOCK=block)


def test_compile_workers_compile_what_was_recorded_and_this_process_loads_it(
        tmp_path, monkeypatch):
    # The workers import the kernel by module and name: support.tiny_kernels, not this file
    # (pytest imports test files under names another process need not share).
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    x = torch.arange(1000, dtype=torch.float32, device="cuda")
    blocks = (128, 512)
    outs = [torch.zeros_like(x) for _ in blocks]
    recorded: dict = {}
    with compile_ahead.skipping_compiles(recorded):
        for out, block in zip(outs, blocks):
            _add_one(x, out, block)
            _add_one(x, out, block)         # the second launch finds the placeholder
    assert all(bool((out == 0).all()) for out in outs), "a skipped kernel ran"
    jobs = [compile_pool.job_for(kernel, data) for kernel, data in recorded.values()]
    assert len(jobs) == 2 and not any(compile_pool.is_cached(job) for job in jobs)
    pool = compile_pool.CompilePool(2).start()
    monkeypatch.setattr(compile_pool, "_shared", pool)
    try:
        with CompileWatch() as watch:
            assert compile_ahead.compile_recorded(recorded) == 2     # handed over, not waited
            wait(pool.submit(jobs))         # the same two jobs: nothing new is compiled
            assert host_launchers(), "the workers built no host launcher"
            for out, block in zip(outs, blocks):
                _add_one(x, out, block)     # waits for its worker, then loads from the cache
            torch.cuda.synchronize()
        # the workers' two compiles are reported; loading them here was a cache hit each
        assert watch.count == 2, watch.describe()
        assert all(compile_pool.is_cached(job) for job in jobs)
    finally:
        pool.close()
    assert triton.knobs.runtime.jit_cache_hook is None, "the pool left its compile hook"
    for out in outs:
        assert torch.equal(out, x + 1)
    outs = [torch.zeros_like(x) for _ in blocks]
    with CompileWatch() as watch:
        for out, block in zip(outs, blocks):
            _add_one(x, out, block)
    torch.cuda.synchronize()
    assert watch.count == 0, watch.describe()
    for out in outs:
        assert torch.equal(out, x + 1)


def test_kiln_kernels_compiled_by_workers_load_here_under_the_same_key(tmp_path, monkeypatch):
    """Kiln's kernels call helpers that read module globals (pdl.await_previous_kernel): the
    workers, where each kernel is the first its process keys, must file it under the key this
    process computes after other kernels (run 23a compiled 96 of 97 again; kernels/jit_keys.py)."""
    from runtime_service.model.kernels import rms_norm

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    # A width no other test uses, so this process has compiled neither kernel for it yet.
    x = torch.randn(4, 1552, dtype=torch.float16, device="cuda")
    weight = torch.randn(1552, dtype=torch.float16, device="cuda")
    launches = [lambda: rms_norm.rms_norm(x, weight, 1e-5),
                lambda: rms_norm.add_rms_norm(x, x, weight, 1e-5)]
    recorded: dict = {}
    with compile_ahead.skipping_compiles(recorded):
        for launch in reversed(launches):       # recorded in one order, launched in the other
            launch()
    jobs = [compile_pool.job_for(kernel, data) for kernel, data in recorded.values()]
    assert len(jobs) == 2
    pool = compile_pool.CompilePool(2).start()
    monkeypatch.setattr(compile_pool, "_shared", pool)
    try:
        wait(pool.submit(jobs))
        assert all(compile_pool.is_cached(job) for job in jobs)
        with CompileWatch() as watch:
            for launch in launches:
                launch()
            torch.cuda.synchronize()
        assert pool.rekeyed == [] and watch.count == 2, watch.describe()
    finally:
        pool.close()
    out, _ = rms_norm.add_rms_norm(x, x, weight, 1e-5)
    torch.testing.assert_close(out, rms_norm.rms_norm_reference(x + x, weight, 1e-5),
                               atol=2e-2, rtol=2e-2)


def test_a_launch_from_another_thread_while_recording_fails_loudly():
    import threading

    x = torch.arange(1000, dtype=torch.float32, device="cuda")
    out = torch.zeros_like(x)
    errors = []

    def other_thread():
        try:
            _add_one(x, out, 64)
        except RuntimeError as exc:
            errors.append(exc)

    recorded: dict = {}
    with compile_ahead.skipping_compiles(recorded):
        _add_one(x, out, 64)
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "records" in str(errors[0])
    _add_one(x, out, 64)                        # after recording: compiles and runs
    torch.cuda.synchronize()
    assert torch.equal(out, x + 1)


def test_a_tuner_asked_while_recording_answers_untimed_and_records_its_candidates(
        tmp_path, monkeypatch):
    from runtime_service.model.kernels import gemv

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setattr(gemv, "_tuned", {})
    x = torch.randn(3, 512, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(384, 512, device="cuda", dtype=torch.bfloat16)
    recorded: dict = {}
    with compile_ahead.skipping_compiles(recorded):
        gemv.gemv(x, weight)
    candidates = gemv.candidate_configs(4, 384, 512, torch.cuda.get_device_properties(
        0).multi_processor_count)
    triton_candidates = [c for c in candidates if c.kind != "cublas"]
    assert gemv._tuned == {}, "it timed while recording"
    assert len(recorded) >= min(2, len(triton_candidates))
    compile_ahead.compile_recorded(recorded)
    with CompileWatch() as watch:
        out = gemv.gemv(x, weight)                      # tunes now, with nothing to compile
    assert watch.count == 0, watch.describe()
    assert gemv._tuned, "the tuner did not tune"
    torch.testing.assert_close(out, gemv.gemv_reference(x, weight), rtol=2e-2, atol=2e-2)


def _greedy_tokens(folder, prompts):
    executor = Executor.from_folder(folder, ExecutorOptions(
        device="cuda", dtype="bfloat16", block_size=16, max_num_tokens=64,
        max_batch_size=4)).start()
    try:
        params = SamplingParams(max_new_tokens=8, min_new_tokens=8, end_id=-1)
        return executor.generate([Request(f"r{i}", p, params) for i, p in enumerate(prompts)])
    finally:
        executor.shutdown()


@LONG          # compiles a whole engine's kernels from an empty cache
def test_an_engine_whose_capture_kernels_compiled_together_gives_the_same_tokens(
        tmp_path, monkeypatch):
    folder = make_random_llama(tmp_path / "model", hidden_size=128, intermediate_size=256,
                               num_attention_heads=4, num_key_value_heads=2,
                               num_hidden_layers=2, vocab_size=384)
    prompts = random_prompts((3, 20, 45), vocab_size=384)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))   # a fresh node
    monkeypatch.setenv(compile_pool.ENV_WORKERS, "4")
    monkeypatch.setattr(compile_pool, "_shared", None)
    counted = []
    real = compile_ahead.precompile_forwards
    monkeypatch.setattr(compile_ahead, "precompile_forwards",
                        lambda forwards: counted.append(real(forwards)) or counted[-1])
    assert compile_pool.start_early() is not None
    try:
        assert compile_ahead.enabled()
        with CompileWatch() as watch:
            together = _greedy_tokens(folder, prompts)
    finally:
        compile_pool.close_shared()
    assert counted and counted[0] > 0, "the decode graphs' kernels were not compiled together"
    assert watch.count > 0
    monkeypatch.setenv(compile_ahead.ENV, "0")
    assert not compile_ahead.enabled()
    assert _greedy_tokens(folder, prompts) == together


@LONG          # compiles a whole engine's kernels from an empty cache
def test_a_start_on_auto_records_every_kernel_its_warm_up_launches(tmp_path, monkeypatch):
    """With long graphs on flash prefill ("auto" on Hopper), the warm-up's largest step (two
    long prompts, paged prefill's long-prompt tile) once compiled a kernel alone after the
    recording pass (bench/NOTES.md run 21b). Nothing may compile without a worker's job."""
    folder = make_random_llama(tmp_path / "model", hidden_size=128, intermediate_size=256,
                               num_attention_heads=4, num_key_value_heads=2,
                               num_hidden_layers=2, vocab_size=384,
                               max_position_embeddings=4096)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))   # a fresh node
    monkeypatch.setenv(compile_pool.ENV_WORKERS, "8")
    monkeypatch.setattr(compile_pool, "_shared", None)
    pool = compile_pool.start_early()
    try:
        executor = Executor.from_folder(folder, ExecutorOptions(
            device="cuda", dtype="bfloat16", block_size=16, max_num_tokens=4096,
            warm_up_largest_step=True)).start()
        try:
            assert len(executor.largest_step_requests()) == 2
            params = SamplingParams(max_new_tokens=4, min_new_tokens=4, end_id=-1)
            executor.generate([Request(f"r{i}", p, params) for i, p in
                               enumerate(random_prompts((2100, 5, 700), vocab_size=384))])
        finally:
            executor.shutdown()
        assert pool.unrecorded == []
    finally:
        compile_pool.close_shared()
