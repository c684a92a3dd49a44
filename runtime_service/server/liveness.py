"""Is the step loop making progress? The answer behind the liveness health service.

A wedged step loop (a stuck collective, a kernel that never returns, a deadlock) leaves the gRPC
server answering, so the server's overall health cannot catch it. The watchdog can: a loop that
has work but whose step counter stays put for `timeout_s` is stalled. An idle loop is never
stalled, however long it waits. Pure logic: the clock and the stats reader are passed in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

from runtime_service.errors import InvalidRequest


class StepStats(Protocol):
    """What the watchdog reads of runtime_service.engine.executor.ExecutorStats."""

    num_live_requests: int
    num_waiting: int
    num_running: int
    num_steps: int


@dataclass(frozen=True)
class Verdict:
    stalled: bool
    num_steps: int
    stalled_for_s: float            # seconds with work and no step; 0 when idle or progressing


class StepStallWatchdog:
    """Stalled when the loop has had work and no new step for at least `timeout_s`.

    `read_stats` returns the executor's stats, or None while there is no executor (empty or
    loading pod: nothing to watch). The stall clock starts at the first check that sees work
    with an unchanged counter, so an idle spell never counts against the loop.
    """

    def __init__(self, read_stats: Callable[[], StepStats | None], timeout_s: float,
                 clock: Callable[[], float] = time.monotonic):
        if not timeout_s > 0:
            raise InvalidRequest(f"timeout_s must be > 0, got {timeout_s}")
        self.read_stats = read_stats
        self.timeout_s = timeout_s
        self.clock = clock
        self._last_steps: int | None = None
        self._waiting_since: float | None = None

    @property
    def poll_interval_s(self) -> float:
        """How often to check: often enough that a stall shows within a quarter of the timeout."""
        return min(1.0, self.timeout_s / 4)

    def check(self) -> Verdict:
        stats = self.read_stats()
        now = self.clock()
        if stats is None:
            self._last_steps = self._waiting_since = None
            return Verdict(False, 0, 0.0)
        has_work = stats.num_live_requests > 0 or stats.num_waiting > 0 or stats.num_running > 0
        if not has_work or stats.num_steps != self._last_steps:
            self._last_steps = stats.num_steps
            self._waiting_since = now if has_work else None
            return Verdict(False, stats.num_steps, 0.0)
        if self._waiting_since is None:
            self._waiting_since = now
        waited_s = now - self._waiting_since
        return Verdict(waited_s >= self.timeout_s, stats.num_steps, waited_s)
