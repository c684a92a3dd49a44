"""compile_ahead.after_recording: work that would compete with the recording pass for the GIL
(the engine core's tokenizer load) starts once the pass has ended, whether its forwards all ran
or one failed, and only for the pass that ends inside the `with`."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from runtime_service.model.kernels import compile_ahead


@pytest.fixture
def recording_without_triton(monkeypatch):
    """The recording pass with its Triton hook and CUDA sync stubbed (the CPU has neither)."""
    @contextmanager
    def skipping(recorded):
        yield recorded

    monkeypatch.setattr(compile_ahead, "skipping_compiles", skipping)
    monkeypatch.setattr("torch.cuda.synchronize", lambda: None)
    monkeypatch.setattr("runtime_service.model.kernels.compile_pool.shared", lambda: None)


def test_the_callback_runs_once_after_the_last_forward(recording_without_triton):
    events = []
    forwards = [("a", lambda: events.append("forward a")), ("b", lambda: events.append("forward b"))]
    with compile_ahead.after_recording(lambda: events.append("callback")):
        compile_ahead.precompile_forwards(forwards)
        assert events == ["forward a", "forward b", "callback"]
        compile_ahead.precompile_forwards(forwards)          # a second pass: not again
    assert events.count("callback") == 1


def test_a_failed_pass_still_runs_it(recording_without_triton):
    events = []

    def broken():
        raise RuntimeError("this forward cannot run")

    with compile_ahead.after_recording(lambda: events.append("callback")):
        assert compile_ahead.precompile_forwards([("x", broken)]) == 0
    assert events == ["callback"]


def test_without_a_pass_inside_it_never_runs(recording_without_triton):
    events = []
    with compile_ahead.after_recording(lambda: events.append("callback")):
        pass
    compile_ahead.precompile_forwards([("a", lambda: None)])   # a later start's pass
    assert events == []


def test_a_failing_callback_does_not_fail_the_pass(recording_without_triton):
    def failing():
        raise OSError("tokenizer.json: no such file")

    with compile_ahead.after_recording(failing):
        compile_ahead.precompile_forwards([("a", lambda: None)])
