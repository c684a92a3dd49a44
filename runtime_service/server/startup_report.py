"""Where a pod's start-up time goes: one clock per phase, one log line at the end.

Phases, in the order a start runs them: imports (process start until the engine code is loaded),
pull (bytes from the store, sha256 computed as they arrive), verify (re-hashing a cached or
local engine) (both run during the imports and count only the wait left after them), load (weights to the device), graph_capture (KV cache and CUDA-graph capture),
tuning (GEMV configs timed; it happens inside graph capture and warm-up, and is moved out of
them here), warm_up (the largest step and a first request through the step loop). The log line
`startup total_s=... imports_s=... ...` is what bench/bench_cold_start.py reads back.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PHASES = ("imports", "pull", "verify", "load", "graph_capture", "tuning", "warm_up")
LOG_PREFIX = "startup "


def process_age_s() -> float:
    """Seconds since this process started, from the kernel's record of its start (Linux); 0.0
    where /proc cannot say."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        with open("/proc/uptime") as handle:
            uptime_s = float(handle.read().split()[0])
        start_ticks = int(fields[19])       # field 22 of stat, counted after the command name
        return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass(frozen=True)
class StartupReport:
    """Seconds per phase (PHASES order) and what the start found: how many GEMV shapes it had
    to time, where its tuning came from ("local", "store", or "" when nothing was cached), how
    many bytes it pulled, how many compiled kernel files it took from the store, how many GPU
    kernels it compiled itself (Triton's cache misses in this process: a start that found every
    kernel compiles none; ranks of a parallel engine compile in their own processes, not counted
    here), how many host launchers it built, and how many compile workers it ran (0: none)."""

    seconds: tuple[tuple[str, float], ...]
    tuned_shapes: int = 0
    tuning_source: str = ""
    pulled_bytes: int = 0
    kernel_files_from_store: int = 0
    kernels_compiled: int = 0
    launchers_built: int = 0          # Triton's host launchers (C, built by this node's compiler)
    compile_workers: int = 0          # kernels/compile_pool.py: processes compiling side by side

    def __post_init__(self):
        names = [name for name, _ in self.seconds]
        if names != list(PHASES):
            raise ValueError(f"seconds must name the phases {PHASES} in order, got {names}")
        if any(value < 0 for _, value in self.seconds):
            raise ValueError(f"phase seconds must be >= 0, got {self.seconds}")

    @property
    def total_s(self) -> float:
        return sum(value for _, value in self.seconds)

    def as_dict(self) -> dict:
        return {"total_s": round(self.total_s, 3),
                **{f"{name}_s": round(value, 3) for name, value in self.seconds},
                "tuned_shapes": self.tuned_shapes, "tuning_source": self.tuning_source or "none",
                "pulled_bytes": self.pulled_bytes,
                "kernel_files_from_store": self.kernel_files_from_store,
                "kernels_compiled": self.kernels_compiled,
                "launchers_built": self.launchers_built,
                "compile_workers": self.compile_workers}

    def log_line(self) -> str:
        return LOG_PREFIX + " ".join(f"{key}={value}" for key, value in self.as_dict().items())

    @classmethod
    def parse_log_line(cls, line: str) -> dict:
        """The fields of a `log_line()` found anywhere in `line` (numbers as floats or ints)."""
        start = line.index(LOG_PREFIX) + len(LOG_PREFIX)
        fields = {}
        for item in line[start:].split():
            key, _, value = item.partition("=")
            try:
                fields[key] = json.loads(value)
            except ValueError:
                fields[key] = value
        return fields


class StartupClock:
    """Accumulates wall time per phase. `tuning_s()` reads the GEMV tuner's running total: time
    it grew by inside a phase is booked to "tuning" instead of that phase."""

    def __init__(self, tuning_s: Callable[[], float] = lambda: 0.0):
        self._tuning_s = tuning_s
        self._seconds = dict.fromkeys(PHASES, 0.0)

    def add(self, phase: str, seconds: float) -> None:
        if phase not in self._seconds:
            raise ValueError(f"unknown start-up phase {phase!r}; phases are {PHASES}")
        self._seconds[phase] += max(0.0, seconds)

    def set_tuning_clock(self, tuning_s: Callable[[], float]) -> None:
        self._tuning_s = tuning_s

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started, tuned_before = time.perf_counter(), self._tuning_s()
        try:
            yield
        finally:
            tuned = self._tuning_s() - tuned_before
            self.add(name, time.perf_counter() - started - tuned)
            self.add("tuning", tuned)

    def report(self, **facts) -> StartupReport:
        return StartupReport(tuple(self._seconds.items()), **facts)
