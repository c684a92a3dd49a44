"""Compiling the kernels a CUDA-graph capture will launch all at once, before it launches them.

On a fresh node the first pod's graph capture spent 17.7 s compiling Triton kernels one at a time,
each as it was first launched (bench/NOTES.md, run 18a), while the GEMV tuner's candidates
compiled on a thread pool (`gemv.precompile`) in a fraction of their sequential time. With
`KILN_PARALLEL_GRAPH_COMPILE=1`, `capture_graphs` first runs every forward once with Triton's
compile hook (`knobs.runtime.jit_cache_hook`) answering "skip" for each kernel not yet compiled:
the kernel's specialization is recorded and it is neither compiled nor launched (the forward's
outputs are garbage and are dropped). The recorded kernels then compile together on a thread
pool (Triton's `AsyncCompileMode` with `JITFunction.preload`), and the capture proper finds them
all compiled. The tuners answer a recording forward with their untimed default, so nothing is
timed on skipped kernels; they tune for real in the capture's own warm-up.

Opt-in until a GPU run measures it (NOTES, session of 2026-12-04).
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
    return os.environ.get(ENV, "") == "1"


def recording() -> bool:
    """True inside `skipping_compiles` on this thread: a tuner answers with its default."""
    return getattr(_recording, "active", False)


@contextmanager
def skipping_compiles(recorded: dict):
    """Inside: each Triton kernel that would compile is recorded in `recorded` ((kernel, cache
    key) -> (kernel, specialization data)) and skipped, its launch too."""
    from triton import knobs

    def record(**hook_args):
        if not recording():             # another thread's kernel: compile it as usual
            return previous(**hook_args) if previous is not None else None
        fn = hook_args["fn"]
        recorded.setdefault((id(fn.jit_function), hook_args["key"]),
                            (fn.jit_function, hook_args["compile"]["specialization_data"]))
        return True

    previous = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = record
    _recording.active = True
    try:
        yield recorded
    finally:
        _recording.active = False
        knobs.runtime.jit_cache_hook = previous


def compile_recorded(recorded: dict, threads: int = THREADS) -> int:
    """Compiles every recorded kernel on a thread pool; returns how many. Best effort: one that
    fails here compiles (or fails) when it is first launched, as it would have."""
    import triton

    if not recorded:
        return 0
    with ThreadPoolExecutor(min(threads, len(recorded)), thread_name_prefix="kiln-compile") \
            as pool, triton.AsyncCompileMode(pool, ignore_errors=True):
        for kernel, data in recorded.values():
            try:
                kernel.preload(data)
            except Exception as exc:  # noqa: BLE001 - it compiles when launched instead
                log.debug("no early compile for %s: %r", kernel, exc)
    return len(recorded)


def precompile_forwards(forwards) -> int:
    """Runs each forward of `forwards` ((key, forward) pairs) once, recording instead of
    compiling, then compiles what they need together; returns the kernels compiled."""
    import torch

    started = time.perf_counter()
    recorded: dict = {}
    try:
        with skipping_compiles(recorded):
            for _, forward in forwards:
                forward()
        torch.cuda.synchronize()
        count = compile_recorded(recorded)
    except Exception as exc:  # noqa: BLE001 - an optimisation only: the capture compiles as before
        log.warning("compiling the capture's kernels ahead failed (%r); they compile as they "
                    "are first launched", exc)
        return 0
    log.info("compiled %d kernels for the graph capture on a thread pool in %.1f s", count,
             time.perf_counter() - started)
    return count
