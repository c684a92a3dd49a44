"""The tuners' run-off among near ties (`tuning_clock.fastest`), with a scripted clock: which
candidates are timed again, in which order, and which wins. Needs neither Triton nor a GPU."""

from __future__ import annotations

import pytest

from runtime_service.model.kernels import tuning_clock
from runtime_service.model.kernels.tuning_clock import fastest


def _clock(times: dict):
    """time_again(config) giving each config's scripted times in turn, logging the calls."""
    calls = []

    def time_again(config):
        calls.append(config)
        value = times[config].pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    return time_again, calls


def test_near_ties_are_timed_again_and_the_best_median_wins():
    first = {"a": 10.0, "b": 10.3, "c": 10.4, "d": 12.0}
    time_again, calls = _clock({"a": [11.0, 11.0], "b": [10.0, 10.0], "c": [10.2, 10.2]})
    assert fastest(first, time_again) == ("b", 10.0)
    # d (20% slower) is not a finalist; the rounds alternate their order
    assert calls == ["c", "b", "a", "a", "b", "c"]


def test_a_clear_winner_is_not_timed_again():
    time_again, calls = _clock({})
    assert fastest({"a": 10.0, "b": 11.0}, time_again) == ("a", 10.0)
    assert calls == []


def test_at_most_three_finalists_and_a_failing_one_drops_out():
    first = {"a": 10.0, "b": 10.1, "c": 10.2, "d": 10.3}
    time_again, calls = _clock({"a": [RuntimeError("lost the GPU")], "b": [10.4, 10.4],
                                "c": [10.3, 10.3]})
    assert fastest(first, time_again) == ("c", 10.3)
    assert "d" not in calls and calls.count("a") == 1


def test_every_finalist_failing_falls_back_to_the_first_times():
    time_again, _ = _clock({"a": [RuntimeError("x")], "b": [RuntimeError("y")]})
    assert fastest({"a": 10.0, "b": 10.2}, time_again) == ("a", 10.0)


@pytest.mark.parametrize("margin", [0.0, 0.05])
def test_the_margin_sets_who_runs_off(monkeypatch, margin):
    monkeypatch.setattr(tuning_clock, "RUNOFF_MARGIN", margin)
    time_again, calls = _clock({"a": [9.0, 9.0], "b": [9.0, 9.0]})
    fastest({"a": 10.0, "b": 10.4}, time_again)
    assert bool(calls) == (margin > 0)
