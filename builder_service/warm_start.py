"""`kiln build --warm-startup-cache`: start the new engine once on this machine's GPU, as a
runtime pod with `--share-startup-cache` starts it, then stop it.

A pod's start-up on a GPU model it has never met compiles every kernel and tunes every decode
GEMV: 61 s for the Llama-3-8B shape on an H200, against 14.6 s for a pod that finds the first
one's tuning records and compiled kernels beside the engine in the store (bench/NOTES.md, run
17f). Warming here makes the build Job that first pod, so no serving pod pays it. Both caches
are kept per GPU model: a build on another model of GPU warms nothing the pods can use.

The engine starts in its own engine-core process (server/core_client.py), exactly as in a pod,
with a fresh cache directory and a fresh Triton kernel folder, so every kernel the engine runs
compiles there and travels to the store. Stopping waits for the kernels to be shared. It runs
with the runtime's default executor options: a pod started with other ones (larger CUDA-graph
batches, say) tunes and compiles only the shapes the warm-up did not meet.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from runtime_service.errors import FailedPrecondition

log = logging.getLogger("kiln.builder")


def warm_startup_cache(uri: str, work_dir: Path):
    """Starts and stops `uri`'s engine on this machine's GPU; returns the start's
    StartupReport (tuned shapes, seconds per phase). Needs CUDA: the caches are per GPU model,
    and a CPU start computes nothing to keep."""
    import torch

    from runtime_service.engine.executor_options import ExecutorOptions
    from runtime_service.server import kernel_cache
    from runtime_service.server.core_client import start_core_process
    from runtime_service.server.engine_host import RuntimeSettings
    if not torch.cuda.is_available():
        raise FailedPrecondition("--warm-startup-cache needs a CUDA GPU of the model the pods "
                                 "run on: tuning and compiled kernels are kept per GPU model")
    work_dir.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_initialized():
        # The build left blocks in this process's allocator. The engine core sizes its KV cache
        # from the GPU's free memory, as a pod does on a GPU of its own: give them back.
        torch.cuda.empty_cache()
        log.info("warming with %.1f GiB of the GPU free", torch.cuda.mem_get_info()[0] / 2**30)
    cache_dir = Path(tempfile.mkdtemp(prefix="warm-startup-", dir=work_dir))
    previous = os.environ.get(kernel_cache.ENV)
    os.environ[kernel_cache.ENV] = str(cache_dir / "kernels" / "triton")   # the core inherits it
    try:
        settings = RuntimeSettings(cache_dir=cache_dir, executor=ExecutorOptions(device="cuda"),
                                   share_startup_cache=True)
        started = start_core_process(uri, settings)
        started.executor.shutdown()          # the core waits for its kernels to reach the store
    finally:
        if previous is None:
            os.environ.pop(kernel_cache.ENV, None)
        else:
            os.environ[kernel_cache.ENV] = previous
        shutil.rmtree(cache_dir, ignore_errors=True)
    log.info("warmed the start-up cache of %s: %s", uri, started.report.log_line())
    return started.report
