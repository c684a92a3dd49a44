"""The tuner compiles a shape's candidates together before timing them (tuning_clock.precompile):
every candidate's warm-up launches run once while Triton's compile hook records what they would
compile (compile_ahead.compile_launches), and nothing that goes wrong there reaches the tuner,
which compiles (or reports) each candidate when it times it, as before. Needs Triton (absent on the
CPU CI machines, where nothing tunes); no GPU."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")
tuning_clock = pytest.importorskip("runtime_service.model.kernels.tuning_clock")
from runtime_service.model.kernels import compile_ahead  # noqa: E402


def test_every_candidate_is_warmed_up_while_compiles_are_recorded():
    seen = []

    def warm_up(config):
        assert compile_ahead.recording()          # launches now only record their kernels
        seen.append(config)

    previous = triton.knobs.runtime.jit_cache_hook
    tuning_clock.precompile(warm_up, ["a", "b", "c"])
    assert seen == ["a", "b", "c"]
    assert not compile_ahead.recording()
    assert triton.knobs.runtime.jit_cache_hook is previous       # and the hook is put back


def test_a_failing_candidate_neither_stops_the_others_nor_reaches_the_tuner():
    seen = []

    def warm_up(config):
        if config == "bad":
            raise ValueError("this GPU cannot run it")
        seen.append(config)

    tuning_clock.precompile(warm_up, ["a", "bad", "c"])
    assert seen == ["a", "c"]


def test_one_candidate_compiles_as_before():
    calls = []
    tuning_clock.precompile(calls.append, ["only"])
    assert calls == []
