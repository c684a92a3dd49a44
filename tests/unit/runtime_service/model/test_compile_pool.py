"""Compile workers (kernels/compile_pool.py): kernels compile in other processes into Triton's
file cache, which this process then hits. The compiles target sm_90 offline (Triton ships
ptxas), so no GPU is needed; without Triton (the CPU CI machines) those tests skip and only the
worker count is checked."""

from __future__ import annotations

import json

import pytest

from runtime_service.model.kernels import compile_pool


def test_the_worker_count_comes_from_the_environment_or_the_cpus(monkeypatch):
    monkeypatch.setenv(compile_pool.ENV_WORKERS, "3")
    assert compile_pool.worker_count() == 3
    for bad in ("many", "-1", "1000"):
        monkeypatch.setenv(compile_pool.ENV_WORKERS, bad)
        with pytest.raises(ValueError, match=compile_pool.ENV_WORKERS):
            compile_pool.worker_count()
    monkeypatch.delenv(compile_pool.ENV_WORKERS)
    assert 0 <= compile_pool.worker_count() <= compile_pool.MAX_WORKERS
    assert compile_pool.worker_count() == min(compile_pool.MAX_WORKERS,
                                              compile_pool.available_cpus() - 1)


def test_no_workers_means_no_pool(monkeypatch):
    monkeypatch.setenv(compile_pool.ENV_WORKERS, "0")
    monkeypatch.setattr(compile_pool, "_shared", None)
    assert compile_pool.start_early() is None and compile_pool.shared() is None
    with pytest.raises(ValueError, match="worker"):
        compile_pool.CompilePool(0)


SM90 = ("cuda", 90, 32)


def _jobs(block_sizes):
    from triton.compiler import make_backend
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import serialize_specialization_data

    options = make_backend(GPUTarget(*SM90)).parse_options({"num_warps": 2})
    signature = {"X": "*fp32", "Y": "*fp32", "N": "i32", "BLOCK": "constexpr"}
    aligned = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
    return [compile_pool.CompileJob(
        "support.tiny_kernels", "add_one_kernel",
        serialize_specialization_data("support.tiny_kernels.add_one_kernel", signature,
                                      {(3,): block}, aligned, options, f"key-{block}"), SM90)
        for block in block_sizes]


def test_workers_fill_the_file_cache_that_this_process_then_hits(tmp_path, monkeypatch):
    triton = pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    jobs = _jobs((128, 256, 512))
    missing = compile_pool.CompileJob("support.tiny_kernels", "no_such_kernel",
                                      jobs[0].specialization, SM90)
    assert not any(compile_pool.is_cached(job) for job in jobs)
    heard = []
    monkeypatch.setattr(triton.knobs.compilation, "listener",
                        lambda metadata, cache_hit, **_: heard.append((metadata["name"],
                                                                       cache_hit)))
    pool = compile_pool.CompilePool(2).start()
    try:
        assert sorted(pool.compile(jobs + [missing])) == ["add_one_kernel"] * 3
        assert heard == [("add_one_kernel", False)] * 3     # each compile reported here
        assert all(compile_pool.is_cached(job) for job in jobs)
        assert pool.compile(jobs[:1]) == []                 # a second time: nothing new
    finally:
        worker = pool._process
        pool.close()
    assert worker.poll() is not None                        # the worker process ended
    heard.clear()
    src, _, options = compile_pool._source(
        compile_pool.jit_function("support.tiny_kernels", "add_one_kernel"),
        jobs[1].specialization, triton.backends.compiler.GPUTarget(*SM90))
    triton.compile(src, target=triton.backends.compiler.GPUTarget(*SM90),
                   options=options.__dict__)
    assert heard == [("add_one_kernel", True)]              # what a launch here would do


def test_a_kernel_that_is_not_a_module_level_jit_function_is_refused():
    pytest.importorskip("triton")
    with pytest.raises(LookupError):
        compile_pool.jit_function("support.tiny_kernels", "triton")
    with pytest.raises(LookupError):
        compile_pool.jit_function("support.tiny_kernels", "nothing_here")


def test_a_cache_folder_set_as_a_knob_reaches_the_workers(tmp_path, monkeypatch):
    triton = pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "not-this-one"))
    triton.knobs.cache.dir = str(tmp_path / "knob")        # (which also sets TRITON_CACHE_DIR,
    # so the environment says another folder again)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "not-this-one"))
    try:
        jobs = _jobs((64,))
        pool = compile_pool.CompilePool(1).start()
        try:
            assert pool.compile(jobs) == ["add_one_kernel"]
        finally:
            pool.close()
        assert compile_pool.is_cached(jobs[0])
        assert any((tmp_path / "knob").iterdir())
        assert not (tmp_path / "not-this-one").exists()
    finally:
        del triton.knobs.cache.dir          # back to TRITON_CACHE_DIR, which monkeypatch restores


def test_a_kernel_about_to_compile_here_waits_for_its_worker_and_is_reported_once(
        tmp_path, monkeypatch):
    from types import SimpleNamespace

    triton = pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    heard = []
    monkeypatch.setattr(triton.knobs.compilation, "listener",
                        lambda metadata, cache_hit, **_: heard.append(metadata["name"]))
    jobs = _jobs((128, 256))
    # No GPU here: the pod's own target is the one the workers compiled for.
    monkeypatch.setattr(compile_pool, "job_for", lambda kernel, data: compile_pool.CompileJob(
        kernel.fn.__module__, kernel.fn.__name__, data, SM90))
    pool = compile_pool.CompilePool(2).start()
    try:
        assert triton.knobs.runtime.jit_cache_hook == pool._wait_for_worker
        first = pool.submit(jobs)
        assert pool.submit(jobs[:1]) == first[:1]              # handed over once
        fn = compile_pool.jit_function("support.tiny_kernels", "add_one_kernel")
        for job in jobs:
            hook_args = {"fn": SimpleNamespace(jit_function=fn),
                         "compile": {"specialization_data": job.specialization}}
            assert triton.knobs.runtime.jit_cache_hook(**hook_args) is None   # compile here
            assert compile_pool.is_cached(job)                 # ... which will be a hit
            triton.knobs.runtime.jit_cache_hook(**hook_args)   # asked again: not reported again
        unknown = {"fn": SimpleNamespace(jit_function=fn), "compile": {"specialization_data": "{}"}}
        assert triton.knobs.runtime.jit_cache_hook(**unknown) is None    # no job: no wait
        assert pool.unrecorded == ["add_one_kernel"]            # ... and named as missed
        assert pool.rekeyed == []                   # the workers' files are under this key
        # what close() logs: both jobs back, and the waits in the hook (the first one waited
        # at least for its compile; asked again it was done)
        summary = pool.summary()
        assert summary.startswith("2 of 2 jobs done, the last ")
        assert "(add_one_kernel)" in summary and "the start waited" in summary
    finally:
        pool.close()
    assert heard == ["add_one_kernel"] * 2
    assert triton.knobs.runtime.jit_cache_hook is None          # the hook is taken out
    # A second pool (a pod whose kernels came from the store): a kernel with no job that the
    # file cache holds loads from it, and is not named as missed by the recording.
    pool = compile_pool.CompilePool(1).start()
    try:
        hook_args = {"fn": SimpleNamespace(jit_function=fn),
                     "compile": {"specialization_data": jobs[0].specialization}}
        assert triton.knobs.runtime.jit_cache_hook(**hook_args) is None
        assert pool.unrecorded == []
    finally:
        pool.close()


def test_a_kernel_its_worker_filed_under_another_key_is_named_as_compiled_again(
        tmp_path, monkeypatch, caplog):
    import shutil
    from concurrent.futures import wait
    from types import SimpleNamespace

    triton = pytest.importorskip("triton")
    cache = tmp_path / "triton"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))
    monkeypatch.setattr(compile_pool, "job_for", lambda kernel, data: compile_pool.CompileJob(
        kernel.fn.__module__, kernel.fn.__name__, data, SM90))
    jobs = _jobs((128, 256))
    pool = compile_pool.CompilePool(2).start()
    try:
        wait(pool.submit(jobs))
        assert all(compile_pool.is_cached(job) for job in jobs)
        shutil.rmtree(cache)    # what the pod finds where its key is not the worker's: nothing
        fn = compile_pool.jit_function("support.tiny_kernels", "add_one_kernel")
        for job in jobs:
            triton.knobs.runtime.jit_cache_hook(
                fn=SimpleNamespace(jit_function=fn),
                compile={"specialization_data": job.specialization})
        assert pool.rekeyed == ["add_one_kernel"] * 2
        assert "2 compiled again here under another cache key" in pool.summary()
        assert "add_one_kernel compiles again in the pod" in caplog.text
    finally:
        pool.close()


def test_a_pool_with_no_jobs_has_nothing_to_say():
    assert compile_pool.CompilePool(1).summary() == ""


def test_one_job_builds_each_host_launcher():
    signature = {"X": "*fp32", "N": "i32", "BLOCK": "constexpr"}

    def job(name, block, sig=signature):
        spec = json.dumps({"name": name, "signature": sig, "block": block})
        return compile_pool.CompileJob("m", name, spec, SM90)

    built = set()
    jobs = [job("a", 64), job("a", 128), job("b", 64), job("c", 64, {"X": "*fp16", "N": "i32"})]
    marked = compile_pool.with_launchers(jobs, built)
    assert [j.build_launcher for j in marked] == [True, False, False, True]
    assert [j.specialization for j in marked] == [j.specialization for j in jobs]
    assert not any(j.build_launcher for j in compile_pool.with_launchers(jobs, built))


def test_a_worker_that_dies_fails_its_jobs_and_the_kernels_compile_here(tmp_path, monkeypatch):
    triton = pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    pool = compile_pool.CompilePool(1).start()
    try:
        pool._process.kill()
        pool._process.wait()
        futures = pool.submit(_jobs((128,)))
        with pytest.raises(RuntimeError, match="compile worker"):
            futures[0].result(timeout=30)
        assert pool.compile(_jobs((256,))) == []
    finally:
        pool.close()
    assert triton.knobs.runtime.jit_cache_hook is None


def test_the_worker_loop_answers_every_job_by_id_and_ends_when_its_input_closes():
    """compile_worker.serve on its own, without Triton's imports: more jobs than children, each
    answered once by its id (here with an error: the module does not exist), and the process
    ends when its input closes."""
    import subprocess
    import sys
    import threading

    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys; from runtime_service.model.kernels.compile_worker "
         "import serve; serve(2, sys.stdin.fileno(), sys.stdout.fileno())"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    job = {"module": "no_such_module", "name": "k", "specialization": "{}",
           "target": ["cuda", 90, 32], "build_launcher": False}
    answers = []
    reader = threading.Thread(
        target=lambda: answers.extend(json.loads(worker.stdout.readline()) for _ in range(5)))
    reader.start()
    try:
        worker.stdin.write(b"".join(json.dumps({"id": i, "job": job}).encode() + b"\n"
                                    for i in range(5)))
        worker.stdin.flush()
        reader.join(timeout=120)
        assert sorted(a["id"] for a in answers) == [0, 1, 2, 3, 4]
        assert all("error" in a for a in answers)       # (without Triton: that import)
    finally:
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0
