"""Compiling Triton kernels in worker processes, so a fresh node's compiles run side by side.

A fresh node's first pod compiles about a hundred kernels: the graph capture's and the GEMV
tuners' candidates. On threads they barely overlap: Triton's passes hold the GIL for much of a
compile (20 kernels took 10.5 s on 16 threads, bench/NOTES.md run 20c). Here each kernel compiles
in its own process into Triton's file cache (TRITON_CACHE_DIR, the pod's), and the pod then
loads it from there as a cache hit: the same source, specialization and options give the same
cache key in both processes.

- A job is what Triton's compile hook records for a kernel that has not compiled yet: the
  JIT function (found in the worker by module and name) and its specialization data (JSON, the
  format of `JITFunction.preload`), with the GPU target, so a worker never touches the GPU.
- One worker process (compile_worker.py) imports torch and Triton once and forks a child per
  job (copy-on-write), so N workers cost one import; jobs and results cross its pipes as JSON
  lines, never pickled. `start_early` starts it while the pod pulls and loads, when the pod's
  kernel cache is empty; the pod closes it once it serves.
- A worker also builds host launchers (C extensions Triton compiles with the system compiler),
  one per set of argument types, which even a pod that took every kernel from the store builds.
- Best effort: a job that fails (a kernel defined inside a function, another Triton's data)
  is left for the pod to compile itself, as before. Each kernel a worker compiled is reported
  to Triton's compilation listener in this process, so counts of compiled kernels (the start-up
  report's `kernels_compiled`) include them.

`KILN_COMPILE_WORKERS`: how many workers (0: none, compile on threads in the pod); by default
one per CPU this process may use, less one, at most 16.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path

log = logging.getLogger("kiln.kernels.compile_pool")

ENV_WORKERS = "KILN_COMPILE_WORKERS"
MAX_WORKERS = 16
JOB_TIMEOUT_S = 300


@dataclass(frozen=True)
class CompileJob:
    module: str             # where the kernel's JIT function is defined
    name: str               # its name there
    specialization: str     # JSON from Triton's compile hook (`JITFunction.preload`'s format)
    target: tuple           # GPUTarget fields: (backend, arch, warp_size)
    build_launcher: bool = False    # also build the host launcher for its argument types


def launcher_key(job: CompileJob) -> str:
    """What a kernel's host launcher depends on: its arguments' types in order (Triton's
    `make_launcher` reads nothing else), so kernels that share them share one launcher."""
    return json.dumps(json.loads(job.specialization)["signature"])


def with_launchers(jobs: list[CompileJob], built: set) -> list[CompileJob]:
    """`jobs`, the first of each launcher key not in `built` marked to build it (the key then
    added): one system-compiler run per launcher, not one per kernel (every worker building
    every launcher cost a fresh node's first pod 4 s, bench/NOTES.md run 20g)."""
    marked = []
    for job in jobs:
        key = launcher_key(job)
        if key not in built:
            built.add(key)
            job = replace(job, build_launcher=True)
        marked.append(job)
    return marked


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a Kubernetes
    limit) where there is one."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus or 1)


def worker_count() -> int:
    value = os.environ.get(ENV_WORKERS, "")
    if value:
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"{ENV_WORKERS} must be a whole number, got {value!r}") from None
        if not 0 <= count <= 256:
            raise ValueError(f"{ENV_WORKERS} must be 0 to 256, got {count}")
        return count
    return min(MAX_WORKERS, available_cpus() - 1)


# ---- what both sides compute from a job --------------------------------------------------------

def jit_function(module: str, name: str):
    """The JITFunction `name` of `module` (through autotuner and heuristics wrappers)."""
    from triton.runtime.jit import JITFunction

    found = getattr(importlib.import_module(module), name, None)
    while found is not None and not isinstance(found, JITFunction):
        found = getattr(found, "fn", None)
    if found is None or found.fn.__name__ != name:
        raise LookupError(f"no Triton kernel {module}.{name}")
    return found


def _source(kernel, specialization: str, target):
    """(ASTSource, backend, parsed options) of a recorded specialization, decoded as
    `JITFunction.preload` decodes it."""
    import triton.language as tl
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import convert_to_tuple_if_list

    data = json.loads(specialization)
    if data["name"] != kernel._fn_name:
        raise ValueError(f"specialization of {data['name']}, not of {kernel._fn_name}")
    constexprs = {
        key: tl.dtype(value) if tl.dtype.is_dtype(value)
        else tl.constexpr(value["constexpr"]) if isinstance(value, dict) and "constexpr" in value
        else value
        for key, value in zip(map(tuple, data["constant_keys"]), data["constant_vals"])}
    attrs = dict(zip(map(tuple, data["attrs_keys"]), data["attrs_vals"]))
    signature = {key: convert_to_tuple_if_list(value) for key, value in data["signature"].items()}
    backend = make_backend(target)
    options = backend.parse_options({key: tuple(value) if isinstance(value, list) else value
                                     for key, value in data["options"].items()})
    return ASTSource(kernel, signature, constexprs, attrs), backend, options


def is_cached(job: CompileJob) -> bool:
    """Whether Triton's file cache already holds this job's kernel (what `triton.compile` checks
    first)."""
    import hashlib

    from triton.backends.compiler import GPUTarget
    from triton.runtime.cache import get_cache_key, get_cache_manager
    from triton.runtime.jit import get_cache_invalidating_env_vars

    src, backend, options = _source(jit_function(job.module, job.name), job.specialization,
                                    GPUTarget(*job.target))
    key = get_cache_key(src, backend, options, env_vars=get_cache_invalidating_env_vars())
    manager = get_cache_manager(hashlib.sha256(key.encode("utf-8")).hexdigest())
    group = manager.get_group(f"{src.name[:150]}.json") or {}
    return f"{src.name[:150]}.json" in group


def job_for(kernel, specialization: str) -> CompileJob:
    """The job for a kernel the compile hook recorded, with this process's GPU target."""
    from triton.runtime.driver import driver

    target = driver.active.get_current_target()
    return CompileJob(kernel.fn.__module__, kernel.fn.__name__, specialization,
                      (target.backend, target.arch, target.warp_size))


# ---- the worker side ----------------------------------------------------------------------------

def compile_job(job: CompileJob) -> tuple[str, bool]:
    """Compiles `job` into the file cache (and its host launcher, where marked) -> (kernel
    name, compiled here: False on a hit)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    hits = []
    knobs.compilation.listener = lambda cache_hit, **_: hits.append(cache_hit)
    try:
        target = GPUTarget(*job.target)
        src, _, options = _source(jit_function(job.module, job.name), job.specialization, target)
        kernel = triton.compile(src, target=target, options=options.__dict__)
    finally:
        knobs.compilation.listener = None
    if job.build_launcher:
        _build_launcher(kernel, target)
    return job.name, not (hits and hits[0])


def _build_launcher(kernel, target) -> None:
    """Builds the kernel's host launcher (a C extension: half a second or so of the system
    compiler) into the same cache, where the pod's first launch finds it. It needs libcuda's
    folder on this machine, not the GPU. Best effort: the pod builds what is missing."""
    if target.backend != "cuda":
        return
    try:
        from triton.backends.nvidia.driver import CudaLauncher

        CudaLauncher(kernel.src, kernel.metadata)
    except Exception as exc:  # noqa: BLE001 - the pod builds it at the first launch instead
        log.debug("no launcher built for %s: %r", kernel.name, exc)


# ---- the pod side -------------------------------------------------------------------------------

class CompilePool:
    """A compile-worker process (compile_worker.py) that compiles `CompileJob`s into this
    process's Triton cache, up to `workers` at a time.

    `submit` hands jobs over and returns at once; while the pool runs, a kernel about to compile
    here whose job the workers have in hand waits for it (Triton's compile hook), then loads it
    from the cache. So a start records its kernels, submits them and goes on: its graph capture
    and tuning run while the later kernels still compile, in the order they were recorded, which
    is the order the capture needs them."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"a compile pool needs a worker, got {workers}")
        self.workers = workers
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._futures: dict[int, Future] = {}          # job id -> its result, while running
        self._submitted: dict[tuple, Future] = {}       # (module, name, specialization) -> job
        self._reported: set[tuple] = set()
        self._launchers: set[str] = set()
        self.unrecorded: list[str] = []     # kernels that compiled here without a job
        self.rekeyed: list[str] = []        # kernels a worker compiled under another cache key
        # For the line `close` logs: when the first job went, when each result came back, and
        # how long this process waited in the hook for one (the compiles a start waited on).
        self._first_submit_s: float | None = None
        self._results_s: list[float] = []
        self._waits: list[tuple[float, str]] = []
        self._hook = self._previous_hook = None
        self._overran = False
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def start(self) -> "CompilePool":
        """Starts the worker process (its imports take seconds, in the background) and
        installs the compile hook that waits for workers; returns at once."""
        from triton import knobs

        with self._lock:
            if self._process is not None:
                return self
            environment = dict(os.environ)
            # The folder this process compiles into, even where it was set as a knob, not by
            # TRITON_CACHE_DIR (a knob set here does not reach another process), and this
            # process's import path, so the worker finds every kernel module this one does.
            environment["TRITON_CACHE_DIR"] = str(knobs.cache.dir)
            environment["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
            # PDL as this process resolved it (its "auto" asks the GPU, which a worker need not
            # open): the kernels take it as a compile-time constant, so the keys must agree.
            from runtime_service.model.kernels import pdl

            environment[pdl.ENV] = "1" if pdl.ENABLED else "0"
            environment[pdl.TRIGGER_ENV] = pdl.TRIGGER
            self._process = subprocess.Popen(
                [sys.executable, "-m", "runtime_service.model.kernels.compile_worker",
                 str(self.workers)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment)
            self._reader = threading.Thread(target=self._read_results, daemon=True,
                                            name="kiln-compile-results")
            self._reader.start()
            self._previous_hook = knobs.runtime.jit_cache_hook
            self._hook = self._wait_for_worker
            knobs.runtime.jit_cache_hook = self._hook
        return self

    def _read_results(self) -> None:
        """Resolves each job's future from the worker's result lines; when the worker ends,
        fails whatever it left."""
        stdout = self._process.stdout
        for line in stdout:
            try:
                message = json.loads(line)
                with self._lock:
                    future = self._futures.pop(message["id"])
                    self._results_s.append(time.monotonic())
            except (ValueError, KeyError, TypeError):
                log.warning("the compile worker wrote a line that is not a result: %.200r", line)
                continue
            if "error" in message:
                future.set_exception(RuntimeError(message["error"]))
            else:
                future.set_result((str(message["name"]), bool(message["fresh"])))
        with self._lock:
            left, self._futures = self._futures, {}
        for future in left.values():
            if not future.done():
                future.set_exception(RuntimeError("the compile worker stopped"))

    def submit(self, jobs: list[CompileJob], cached: list[CompileJob] = ()) -> list[Future]:
        """Hands `jobs` to the workers in order (one already handed over is not compiled
        twice); returns their futures at once. Of `cached` (kernels already in the file
        cache), only those whose host launcher no job builds yet go too, to build it."""
        with self._lock:
            if self._process is None:
                raise RuntimeError("the compile pool is not running")
            new = [job for job in jobs
                   if (job.module, job.name, job.specialization) not in self._submitted]
            marked = dict(zip(map(id, new), with_launchers(new, self._launchers)))
            builders = [job for job in with_launchers(list(cached), self._launchers)
                        if job.build_launcher]
            futures, lines = [], []
            if self._first_submit_s is None and (jobs or builders):
                self._first_submit_s = time.monotonic()
            for job in [*jobs, *builders]:
                key = (job.module, job.name, job.specialization)
                if key not in self._submitted:
                    future = Future()
                    job_id = len(self._submitted)
                    self._submitted[key] = self._futures[job_id] = future
                    lines.append(json.dumps({"id": job_id,
                                             "job": asdict(marked.get(id(job), job))}))
                futures.append(self._submitted[key])
            stdin = self._process.stdin
        # Written outside the lock: the reader takes it for each result, and a worker blocked
        # on a full result pipe would stop reading its jobs.
        try:
            with self._write_lock:
                if lines:
                    stdin.write(("\n".join(lines) + "\n").encode())
                    stdin.flush()
        except (OSError, ValueError) as exc:    # the worker is gone: these compile here
            with self._lock:
                lost = [self._futures.pop(json.loads(line)["id"], None) for line in lines]
            for future in lost:
                if future is not None and not future.done():
                    future.set_exception(RuntimeError(f"the compile worker is gone: {exc!r}"))
        return futures[:len(jobs)]

    def compile(self, jobs: list[CompileJob]) -> list[str]:
        """Compiles `jobs` side by side and waits; returns the names of the kernels the workers
        compiled for this call (cache hits, failures and jobs compiled before left out), each
        also reported to Triton's compilation listener here."""
        futures = self.submit(jobs)
        done, late = wait(futures, timeout=JOB_TIMEOUT_S)
        compiled = []
        for job, future in zip(jobs, futures):
            if future in done and self._report(job.module, job.name, job.specialization):
                compiled.append(job.name)
        if late:
            self._overran = True
        return compiled

    def _report(self, module: str, name: str, specialization: str) -> bool:
        """Whether a worker compiled this job (not a cache hit, not a failure) and this is the
        first time it is asked; then also tells Triton's compilation listener here."""
        from triton import knobs

        key = (module, name, specialization)
        future = self._submitted.get(key)
        if future is None or not future.done() or future.exception() is not None:
            if future is not None and future.done():
                log.debug("the workers could not compile %s: %r", name, future.exception())
            return False
        fresh = future.result()[1]
        with self._lock:
            first = key not in self._reported
            self._reported.add(key)
        listener = knobs.compilation.listener
        if fresh and first and listener is not None:
            listener(src=None, metadata={"name": name}, metadata_group={}, times=None,
                     cache_hit=False)
        return fresh and first

    def _wait_for_worker(self, **hook_args):
        """Triton's compile hook: a kernel about to compile here whose job the workers have
        waits for it, then compiles here as a cache hit (or, where they failed, for real)."""
        if self._previous_hook is not None and self._previous_hook(**hook_args):
            return True
        fn = hook_args["fn"].jit_function.fn
        specialization = hook_args["compile"]["specialization_data"]
        future = self._submitted.get((fn.__module__, fn.__name__, specialization))
        if future is not None:
            began = time.monotonic()
            try:
                future.result(timeout=JOB_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a failure or a timeout: it compiles here
                self._overran = self._overran or not future.done()
            waited = time.monotonic() - began
            if waited >= 0.001:
                self._waits.append((waited, fn.__name__))
            if self._report(fn.__module__, fn.__name__, specialization) and \
                    not _in_file_cache(hook_args["fn"].jit_function, specialization):
                # The worker's copy is under another key, so it compiles here again (a
                # kernel's key that depends on launch order did this to 96 of 97, jit_keys.py).
                self.rekeyed.append(fn.__name__)
                log.warning("%s compiles again in the pod: its worker filed it under another "
                            "cache key", fn.__name__)
        elif not _in_file_cache(hook_args["fn"].jit_function, specialization):
            # It compiles here, alone: the recording pass missed it (worth adding there). (While
            # a thread records, its hook answers for it and never calls this one.)
            self.unrecorded.append(fn.__name__)
            log.info("%s compiles in the pod, not recorded ahead: %.1000s", fn.__name__,
                     specialization)
        return None

    def summary(self) -> str:
        """How the jobs went so far, for a start's log: where a fresh node's start waits on
        compiles, and how long the pool took to finish them ('' before any job)."""
        with self._lock:
            first, results, waits = self._first_submit_s, list(self._results_s), list(self._waits)
        if first is None:
            return ""
        line = (f"{len(results)} of {len(self._submitted)} jobs done, the last "
                f"{max(results, default=first) - first:.1f} s after the first was handed over; ")
        if self.rekeyed:
            line += f"{len(self.rekeyed)} compiled again here under another cache key; "
        if not waits:
            return line + "the start never waited for one"
        longest = max(waits)
        return line + (f"the start waited {sum(w for w, _ in waits):.1f} s for {len(waits)} of "
                       f"them, longest {longest[0]:.2f} s ({longest[1]})")

    def close(self, wait_s: float = JOB_TIMEOUT_S) -> None:
        """Removes the compile hook and stops the worker process: it drops queued jobs and
        ends once its running compiles do. Waits up to `wait_s` for that (a start passes 0:
        nothing it needs is still compiling), then leaves a thread to wait, killing the
        process if a compile overruns its time."""
        from triton import knobs

        with self._lock:
            process, hook = self._process, self._hook
            self._process, self._hook = None, None
        if hook is not None and knobs.runtime.jit_cache_hook is hook:
            knobs.runtime.jit_cache_hook = self._previous_hook
        if process is None:
            return
        summary = self.summary()
        if summary:
            log.info("compile workers: %s", summary)
        with self._write_lock:
            try:
                process.stdin.close()
            except OSError:             # a worker that died left unwritten jobs behind
                pass
        for module, name, specialization in list(self._submitted):
            self._report(module, name, specialization)
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            threading.Thread(target=self._reap, args=(process,), daemon=True,
                             name="kiln-compile-reaper").start()
            return
        self._reap(process)

    def _reap(self, process: subprocess.Popen) -> None:
        try:
            process.wait(timeout=1 if self._overran else JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._reader.join()
        process.stdout.close()


def _in_file_cache(kernel, specialization: str) -> bool:
    """Whether a kernel about to compile here will load from the file cache (a pod that took
    its kernels from the store) rather than compile."""
    try:
        return is_cached(job_for(kernel, specialization))
    except Exception:  # noqa: BLE001 - a specialization this Triton cannot read: it compiles
        return False


_shared: CompilePool | None = None


def start_early() -> CompilePool | None:
    """Starts this process's pool now, so its workers are ready when compiles begin (call
    before the first kernel compiles, once TRITON_CACHE_DIR is set); None where there is none
    to start (no Triton, no fork, KILN_COMPILE_WORKERS=0)."""
    global _shared
    if _shared is None:
        workers = worker_count()
        if workers < 1 or not hasattr(os, "fork"):
            return None
        try:
            import triton  # noqa: F401 - the workers compile with it
        except ImportError:
            return None
        _shared = CompilePool(workers).start()
        log.info("started %d kernel compile workers", workers)
    return _shared


def shared() -> CompilePool | None:
    """The pool `start_early` started, if any."""
    return _shared


def close_shared() -> None:
    """Stops the shared pool's workers (a serving pod compiles little after start-up), without
    waiting for compiles nobody waits for."""
    global _shared
    pool, _shared = _shared, None
    if pool is not None:
        pool.close(wait_s=0)
