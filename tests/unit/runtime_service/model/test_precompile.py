"""The tuner compiles a shape's candidates together before timing them (gemv.precompile): every
candidate is warmed up once inside Triton's AsyncCompileMode, and nothing that goes wrong there
reaches the tuner, which compiles (or reports) each candidate when it times it, as before.
Needs Triton (absent on the CPU CI machines, where nothing tunes); no GPU."""

from __future__ import annotations

import threading

import pytest

triton = pytest.importorskip("triton")
gemv = pytest.importorskip("runtime_service.model.kernels.gemv")


def test_every_candidate_is_warmed_up_inside_an_async_compile_mode(monkeypatch):
    monkeypatch.setattr(gemv, "_COMPILE_THREADS", 4)
    seen = []

    def warm_up(config):
        from triton.runtime._async_compile import active_mode
        assert active_mode.get() is not None          # launches now only submit compiles
        seen.append((config, threading.current_thread().name))

    gemv.precompile(warm_up, ["a", "b", "c"])
    assert [config for config, _ in seen] == ["a", "b", "c"]
    from triton.runtime._async_compile import active_mode
    assert active_mode.get() is None                    # and the mode is closed after


def test_a_failing_candidate_neither_stops_the_others_nor_reaches_the_tuner(monkeypatch):
    monkeypatch.setattr(gemv, "_COMPILE_THREADS", 4)
    seen = []

    def warm_up(config):
        if config == "bad":
            raise ValueError("this GPU cannot run it")
        seen.append(config)

    gemv.precompile(warm_up, ["a", "bad", "c"])
    assert seen == ["a", "c"]


def test_one_candidate_or_one_core_compiles_as_before(monkeypatch):
    calls = []
    monkeypatch.setattr(gemv, "_COMPILE_THREADS", 4)
    gemv.precompile(calls.append, ["only"])
    monkeypatch.setattr(gemv, "_COMPILE_THREADS", 1)
    gemv.precompile(calls.append, ["a", "b"])
    assert calls == []
