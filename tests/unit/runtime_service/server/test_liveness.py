"""The step-stall watchdog on a fake clock: idle never stalls, work without steps does."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from runtime_service.errors import InvalidRequest
from runtime_service.server.liveness import StepStallWatchdog


@dataclass
class FakeStats:
    num_live_requests: int = 0
    num_waiting: int = 0
    num_running: int = 0
    num_steps: int = 0


class FakeLoop:
    """A clock and an executor's counters that the test moves by hand."""

    def __init__(self):
        self.now = 1000.0
        self.stats: FakeStats | None = FakeStats()

    def watchdog(self, timeout_s: float = 60.0) -> StepStallWatchdog:
        return StepStallWatchdog(lambda: self.stats, timeout_s, clock=lambda: self.now)


def test_idle_executor_never_stalls():
    loop = FakeLoop()
    watchdog = loop.watchdog()
    for _ in range(100):
        assert not watchdog.check().stalled
        loop.now += 3600


def test_no_executor_never_stalls():
    loop = FakeLoop()
    loop.stats = None
    watchdog = loop.watchdog()
    assert not watchdog.check().stalled
    loop.now += 3600
    assert not watchdog.check().stalled


@pytest.mark.parametrize("work", [dict(num_live_requests=1), dict(num_waiting=2),
                                  dict(num_running=1)])
def test_work_with_a_frozen_step_counter_stalls_after_the_timeout(work):
    loop = FakeLoop()
    watchdog = loop.watchdog(timeout_s=60)
    assert not watchdog.check().stalled                  # idle for a long time first
    loop.now += 500
    loop.stats = FakeStats(num_steps=0, **work)
    assert not watchdog.check().stalled                  # the stall clock starts here
    loop.now += 59.9
    verdict = watchdog.check()
    assert not verdict.stalled and verdict.stalled_for_s == pytest.approx(59.9)
    loop.now += 0.1
    verdict = watchdog.check()
    assert verdict.stalled and verdict.stalled_for_s == pytest.approx(60.0)


def test_steady_steps_never_stall_however_long_a_request_runs():
    loop = FakeLoop()
    watchdog = loop.watchdog(timeout_s=10)
    loop.stats = FakeStats(num_running=4)
    for step in range(1000):
        loop.stats.num_steps = step
        assert not watchdog.check().stalled
        loop.now += 9.9


def test_steps_resuming_clear_a_stall_and_restart_its_clock():
    loop = FakeLoop()
    watchdog = loop.watchdog(timeout_s=5)
    loop.stats = FakeStats(num_live_requests=1, num_running=1, num_steps=7)
    watchdog.check()
    loop.now += 30
    assert watchdog.check().stalled
    loop.stats.num_steps = 8
    verdict = watchdog.check()
    assert not verdict.stalled and verdict.num_steps == 8
    loop.now += 4.9
    assert not watchdog.check().stalled
    loop.now += 0.1
    assert watchdog.check().stalled


def test_work_finishing_clears_a_stall():
    loop = FakeLoop()
    watchdog = loop.watchdog(timeout_s=5)
    loop.stats = FakeStats(num_live_requests=1, num_steps=3)
    watchdog.check()
    loop.now += 6
    assert watchdog.check().stalled
    loop.stats = FakeStats(num_steps=3)                  # aborted: no work, no new step
    assert not watchdog.check().stalled
    loop.now += 60
    assert not watchdog.check().stalled


def test_an_engine_unloaded_mid_stall_is_not_stalled():
    loop = FakeLoop()
    watchdog = loop.watchdog(timeout_s=5)
    loop.stats = FakeStats(num_live_requests=1)
    watchdog.check()
    loop.now += 6
    assert watchdog.check().stalled
    loop.stats = None
    assert not watchdog.check().stalled


@pytest.mark.parametrize("timeout_s, interval_s", [(60, 1.0), (4, 1.0), (2, 0.5), (0.2, 0.05)])
def test_poll_interval_is_at_most_a_second_and_a_quarter_of_the_timeout(timeout_s, interval_s):
    assert FakeLoop().watchdog(timeout_s).poll_interval_s == pytest.approx(interval_s)


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan")])
def test_timeout_must_be_positive(timeout_s):
    with pytest.raises(InvalidRequest, match="timeout_s"):
        FakeLoop().watchdog(timeout_s)
