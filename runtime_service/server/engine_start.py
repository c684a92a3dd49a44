"""Starting the pod's engine, one timed phase after another, with start-up results cached.

fetch (pull or verify) -> load weights -> KV cache and graph capture -> warm-up, each under the
StartupClock; GEMV tuning, wherever it happens, is booked as its own phase. The fetch runs on its
own thread while torch and the engine code import; its phase (pull or verify) counts only the time
the start then still waited for it, so the phases add up to the start's wall time. On CUDA the tuning
records are looked up before anything tunes (the pod's cache, then the store beside the engine)
and written after the warm-up if anything new was timed, so a second start on the same GPU model
times nothing. One log line reports the phases (startup_report.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runtime_service.errors import FailedPrecondition
from runtime_service.format.engine_format import MANIFEST, read_manifest
from runtime_service.server import capabilities, kernel_cache
from runtime_service.server.startup_cache import TuningCache, engine_id_for
from runtime_service.server.startup_report import StartupClock, StartupReport
from runtime_service.store import fetch_engine
from runtime_service.store.progress import StageProgress

log = logging.getLogger("kiln.runtime")

WARMUP_TIMEOUT_S = 600


@dataclass
class StartedEngine:
    executor: object
    folder: Path
    kind: str
    report: StartupReport


def start_engine(uri: str, settings, imports_s: float = 0.0,
                 on_fetched: Callable[[Path | None], None] | None = None) -> StartedEngine:
    """Pulls, loads, captures and warms up `uri`'s engine under `settings` (RuntimeSettings).
    `imports_s`: the process's time before the load began (interpreter and server imports).
    `on_fetched(tokenizer_dir)`: called once the engine is local (the engine-core process tells
    its pod, which then loads its own tokenizer meanwhile)."""
    clock = StartupClock()
    pulled = [0]
    bar = StageProgress("kiln-pull", logger=log)        # a bar on a terminal, else log lines
    show = bar.bytes_callback("pull")

    def progress(done_bytes: int, total_bytes: int, message: str) -> None:
        pulled[0] = max(pulled[0], done_bytes)
        show(done_bytes, total_bytes, message)

    # The pull needs no torch: it runs while torch and the engine code import (seconds each).
    with ThreadPoolExecutor(1, thread_name_prefix="kiln-fetch") as pool:
        fetching = pool.submit(fetch_engine, uri, settings.cache_dir, progress=progress)
        try:
            with clock.phase("imports"):
                from runtime_service.distributed.rank_worker import (engine_world_size,
                                                                     start_ranked_executor)
                from runtime_service.engine.executor import Executor, ExecutorOptions
                from runtime_service.engine.request import Request, SamplingParams
                from runtime_service.engine.token_decoder import load_decoder
                from runtime_service.engine.tokenizer_load import load_in_background
                from runtime_service.model import kernel_tuning
                from runtime_service.model.loader import load_model, tokenizer_dir_for
            waited = time.perf_counter()
            folder, kind = fetching.result()
        except BaseException:
            fetching.cancel()
            raise
        finally:
            bar.close()
    clock.add("imports", imports_s)
    clock.add("pull" if pulled[0] else "verify", time.perf_counter() - waited)
    options = settings.executor or ExecutorOptions()
    tokenizer_dir = tokenizer_dir_for(folder, kind)
    if on_fetched is not None:
        on_fetched(tokenizer_dir)
    world_size = engine_world_size(folder) if kind != "hf" else 1
    if world_size > capabilities.MAX_WORLD_SIZE:
        raise FailedPrecondition(f"the engine needs {world_size} ranks; this runtime runs at "
                                 f"most {capabilities.MAX_WORLD_SIZE}")
    tuning, source, tuned_before, kernels, restored = None, "", 0, None, 0
    launchers_before = kernel_cache.host_launchers()
    # An empty kernel cache (a fresh node): workers compile side by side what this start needs,
    # starting now so they are ready by the graph capture (kernels/compile_pool.py). They stay
    # when the store then supplies the kernels: they still build the host launchers side by
    # side (a second pod without them took 18.0 s, with them 16.0; bench/NOTES.md run 21).
    workers = 0
    if world_size == 1 and not kernel_cache.holds_kernels(kernel_cache.triton_folder()):
        workers = kernel_tuning.start_compile_workers(options.device)
    with kernel_cache.CompileWatch() as watch, _compile_workers_stop(kernel_tuning):
        if world_size > 1:
            # Each rank tunes in its own process; their start is one phase here.
            with clock.phase("load"):
                executor = start_ranked_executor(folder, uri, options, settings.cache_dir).start()
        else:
            # The core only decodes: the builder's saved decoder loads in about 0.3 s on a
            # thread, beside the weight load (engine/token_decoder.py); the executor takes it
            # when it starts.
            tokenizer = (load_in_background(tokenizer_dir, load_decoder)
                         if options.load_tokenizer else None)
            with clock.phase("load"):
                loaded = load_model(folder, device=options.device, dtype=options.dtype)
                device = next(loaded.model.parameters()).device
                kernels = _shared_kernels(uri, kind, settings, device, kernel_tuning)
                if kernels is not None:
                    restored = kernels.restore()
            if device.type == "cuda":
                clock.set_tuning_clock(lambda: kernel_tuning.tuning_totals(device)[1])
                tuning = _tuning_cache(uri, folder, kind, settings, device, kernel_tuning)
                source = _import_cached(tuning, device, kernel_tuning)
                tuned_before = kernel_tuning.tuning_totals(device)[0]
            with clock.phase("graph_capture"):
                executor = Executor(loaded, options, tokenizer_load=tokenizer)
            with clock.phase("warm_up"):
                executor.start()
        warmup = Request("kiln-warmup", [0], SamplingParams(max_new_tokens=2, ignore_eos=True))
        try:
            with clock.phase("warm_up"):
                executor.generate([warmup], timeout_s=WARMUP_TIMEOUT_S)
        except BaseException:
            executor.shutdown()         # stops the step loop and, with ranks, every rank
            raise
    if kernels is not None:
        kernel_cache.share_in_background(kernels)
    tuned = 0
    if tuning is not None:
        tuned = kernel_tuning.tuning_totals(device)[0] - tuned_before
        if tuned:
            tuning.save(kernel_tuning.export_tuning(device))
    if watch.count:
        log.info("compiled %d GPU kernels: %s", watch.count, watch.describe())
    launchers = kernel_cache.host_launchers() - launchers_before
    report = clock.report(tuned_shapes=tuned, tuning_source=source, pulled_bytes=pulled[0],
                          kernel_files_from_store=restored, kernels_compiled=watch.count,
                          launchers_built=len(launchers), compile_workers=workers)
    log.info("loaded %s (%s) from %s in %.1fs", folder, kind, uri, report.total_s - imports_s)
    log.info("%s", report.log_line())
    return StartedEngine(executor, folder, kind, report)


@contextmanager
def _compile_workers_stop(kernel_tuning):
    """Stops the compile workers when the start ends: a serving pod compiles little more."""
    try:
        yield
    finally:
        kernel_tuning.stop_compile_workers()


def _tuning_cache(uri: str, folder: Path, kind: str, settings, device,
                  kernel_tuning) -> TuningCache:
    key = read_manifest(folder).engine_key if (folder / MANIFEST).is_file() else ""
    store = None
    if getattr(settings, "share_startup_cache", False) and kind == "engine":
        from runtime_service.store import open_store
        store = open_store(uri)
    return TuningCache(settings.cache_dir, engine_id_for(folder, key),
                       kernel_tuning.gpu_model(device), kernel_tuning.software_version(), store)


def _shared_kernels(uri: str, kind: str, settings, device, kernel_tuning):
    """The compiled kernels this pod shares through the engine's store (kernel_cache.py), or
    None: not on CUDA, not sharing, no built engine, or no Triton."""
    if (device.type != "cuda" or kind != "engine"
            or not getattr(settings, "share_startup_cache", False)):
        return None
    try:
        import triton
    except ImportError:
        return None
    from runtime_service.store import open_store
    return kernel_cache.SharedKernels(kernel_cache.triton_folder(), open_store(uri),
                                      kernel_tuning.gpu_model(device),
                                      triton.__version__)


def _import_cached(tuning: TuningCache, device, kernel_tuning) -> str:
    records, source = tuning.load()
    if not records:
        return ""
    try:
        count = kernel_tuning.import_tuning(device, records)
    except ValueError as exc:
        log.warning("ignoring tuning cache %s: %s", tuning.path, exc)
        return ""
    log.info("took %d GEMV configs from the %s tuning cache for %s", count, source,
             tuning.gpu_model)
    return source
