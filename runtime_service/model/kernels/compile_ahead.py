"""Compiling the kernels a CUDA-graph capture will launch all at once, before it launches them.

On a fresh node the first pod's graph capture spent 17.7 s compiling Triton kernels one at a time,
each as it was first launched, and its GEMV tuners as long compiling their candidates shape by
shape (bench/NOTES.md, run 18a). Here the runner first runs once every forward the start will
run (`precompile_forwards`, from cuda_graphs.compile_graph_kernels_ahead) with Triton's compile
hook (`knobs.runtime.jit_cache_hook`) answering "skip" for each kernel not yet compiled: the
kernel's specialization is recorded and it is neither compiled nor launched (the forward's
outputs are garbage and are dropped). The tuners, asked for a config while recording, answer
with their untimed default and record every candidate's kernels too (they tune for real in the
capture's own warm-up). The recorded kernels then compile together:

- in worker processes (compile_pool.py) when the pod started them: handed over in the order they
  were recorded, which is the order the capture launches them, and not waited for. Each
  kernel's first launch here waits for its own job, then loads it from the file cache, so the
  capture and the tuning run while later kernels still compile;
- otherwise on a thread pool here (Triton's `AsyncCompileMode` with `JITFunction.preload`).

On when the pod started compile workers (a start with an empty kernel cache), or with
`KILN_PARALLEL_GRAPH_COMPILE=1`; `=0` turns it off. On threads alone it saved nothing (run 20c:
Triton holds the GIL for much of a compile).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

log = logging.getLogger("kiln.kernels.compile_ahead")

ENV = "KILN_PARALLEL_GRAPH_COMPILE"
THREADS = 16
_recording = threading.local()


def enabled() -> bool:
    from runtime_service.model.kernels import compile_pool

    setting = os.environ.get(ENV, "")
    return setting == "1" or (setting != "0" and compile_pool.shared() is not None)


def recording() -> bool:
    """True inside `skipping_compiles` on this thread: a tuner answers with its default."""
    return getattr(_recording, "active", False)


def first_time_recording(key) -> bool:
    """While recording: True the first time `key` (a tuner's shape) is asked about, so a
    tuner records its candidates once per shape, not at every layer of every forward."""
    seen = getattr(_recording, "seen", None)
    if seen is None or key in seen:
        return False
    seen.add(key)
    return True


class _Recorded:
    """What stands in Triton's in-memory kernel cache for a recorded kernel while recording, so
    its later launches cost a cache lookup, not the compile hook's path (about 0.1 ms each; a
    fresh node's recording pass launched tens of thousands of them, bench/NOTES.md run 20e).
    Taken out when recording ends. A launch from a thread that is not recording fails loudly
    rather than running nothing."""

    function = packed_metadata = None

    def launch_metadata(self, *args):
        if not recording():
            raise RuntimeError("a kernel was launched while another thread records its compile")

    def run(self, *args):
        pass


_RECORDED = _Recorded()


@contextmanager
def skipping_compiles(recorded: dict):
    """Inside: each Triton kernel that would compile is recorded in `recorded` ((kernel, cache
    key) -> (kernel, specialization data)) and skipped, its launch too."""
    from triton import knobs

    placed = []

    def record(**hook_args):
        if not recording():             # another thread's kernel: compile it as usual
            return previous(**hook_args) if previous is not None else None
        kernel, key = hook_args["fn"].jit_function, hook_args["key"]
        recorded.setdefault((id(kernel), key),
                            (kernel, hook_args["compile"]["specialization_data"]))
        cache = kernel.device_caches[hook_args["compile"]["device"]][0]
        if key not in cache:
            cache[key] = _RECORDED
            placed.append((cache, key))
        return True

    previous = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = record
    _recording.active, _recording.seen = True, set()
    try:
        yield recorded
    finally:
        _recording.active, _recording.seen = False, None
        knobs.runtime.jit_cache_hook = previous
        for cache, key in placed:
            if cache.get(key) is _RECORDED:
                del cache[key]


def compile_recorded(recorded: dict, threads: int = THREADS) -> int:
    """Compiles every recorded kernel: hands them to the compile workers where the pod runs
    them (returning at once), else compiles them on a thread pool here; returns how many.
    Best effort: one that fails compiles (or fails) when it is first launched, as it would
    have."""
    import triton

    from runtime_service.model.kernels import compile_pool

    if not recorded:
        return 0
    pool = compile_pool.shared()
    if pool is not None:
        jobs, cached = hand_over(pool, recorded.values())
        log.info("handed %d of %d kernels to %d compile workers (%d were cached)", jobs,
                 len(recorded), pool.workers, cached)
        return len(recorded)
    with ThreadPoolExecutor(min(threads, len(recorded)), thread_name_prefix="kiln-compile") \
            as executor, triton.AsyncCompileMode(executor, ignore_errors=True):
        for kernel, data in recorded.values():
            try:
                kernel.preload(data)
            except Exception as exc:  # noqa: BLE001 - it compiles when launched instead
                log.debug("no early compile for %s: %r", kernel, exc)
    return len(recorded)


def hand_over(pool, entries) -> tuple[int, int]:
    """Hands recorded kernels ((kernel, specialization data) pairs) to the compile workers,
    not waiting for them: each kernel's first launch here waits for its own job (the pool's
    compile hook), so what runs next overlaps what still compiles. A cached kernel still goes
    where its host launcher is not built yet (a fresh node that took its kernels from the
    store). Returns (kernels to compile, kernels cached)."""
    from runtime_service.model.kernels import compile_pool

    jobs, cached = [], []
    for kernel, data in entries:
        try:
            job = compile_pool.job_for(kernel, data)
            (cached if compile_pool.is_cached(job) else jobs).append(job)
        except Exception as exc:  # noqa: BLE001 - it compiles here when launched
            log.debug("no worker compile for %s: %r", kernel, exc)
    pool.submit(jobs, cached)
    return len(jobs), len(cached)


def compile_launches(launches) -> int:
    """Calls each of `launches` (no arguments; kernel launches with warmup=True) recording
    instead of compiling, then compiles what they need together; returns the kernels recorded.
    A launch that raises is left to fail where it runs for real."""
    recorded: dict = {}
    with skipping_compiles(recorded):
        for launch in launches:
            try:
                launch()
            except Exception as exc:  # noqa: BLE001 - it fails again when it is timed
                log.debug("no early compile for a launch: %r", exc)
    return compile_recorded(recorded)


def record_candidates(key, launches) -> None:
    """While recording, and the first time for `key` (the tuner's shape), calls each of
    `launches` (its candidates with warmup=True) so their kernels compile with the rest;
    otherwise does nothing."""
    if not first_time_recording(key):
        return
    for launch in launches:
        try:
            launch()
        except Exception as exc:  # noqa: BLE001 - it fails again when it is timed
            log.debug("no early compile for a candidate: %r", exc)


def precompile_forwards(forwards) -> int:
    """Runs each forward of `forwards` ((key, forward) pairs) once, recording instead of
    compiling, then compiles what they need together (or hands them to the compile workers);
    returns the kernels recorded."""
    import torch

    from runtime_service.model.kernels import compile_pool

    started = time.perf_counter()
    recorded: dict = {}
    pool, handed, counts = compile_pool.shared(), 0, [0, 0]
    try:
        with skipping_compiles(recorded):
            for _, forward in forwards:
                forward()
                if pool is not None:
                    # Each forward's new kernels go to the workers at once, so they compile
                    # while the later forwards record (a fresh node's recording pass took
                    # 3-6 s, bench/NOTES.md run 21).
                    counts = [a + b for a, b in zip(counts, hand_over(
                        pool, list(recorded.values())[handed:]))]
                    handed = len(recorded)
        torch.cuda.synchronize()
        if pool is None:
            count = compile_recorded(recorded)
        else:
            count = len(recorded)
            log.info("handed %d of %d kernels to %d compile workers as they were recorded "
                     "(%d were cached)", counts[0], count, pool.workers, counts[1])
    except Exception as exc:  # noqa: BLE001 - an optimisation only: the capture compiles as before
        log.warning("compiling the capture's kernels ahead failed (%r); they compile as they "
                    "are first launched", exc)
        return 0
    log.info("recorded %d kernels for the graph capture and its tuning, and compiled or handed "
             "them over, in %.1f s", count, time.perf_counter() - started)
    return count
