"""A step that raises ends every live stream with a clear status at once; the engine goes on
after a single fault and gives up (refusing new work, telling its host) after repeated ones."""

from __future__ import annotations

import threading
import time

import pytest

from runtime_service.engine.executor import MAX_CONSECUTIVE_STEP_FAILURES, Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.errors import CapacityExceeded, Unavailable
from runtime_service.model.faults import ENV, InjectedFault, StepFaults
from support.random_llama import make_random_llama

VOCAB = 320


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("tiny"), vocab_size=VOCAB)


def executor_with_faults(folder, monkeypatch, spec: str) -> Executor:
    monkeypatch.setenv(ENV, spec)
    executor = Executor.from_folder(folder, ExecutorOptions(block_size=4)).start()
    monkeypatch.delenv(ENV)
    return executor


def long_request(index: int) -> Request:
    return Request(f"r{index}", [5 + index, 6, 7], SamplingParams(max_new_tokens=200,
                                                                  ignore_eos=True))


def drain(stream) -> BaseException | None:
    try:
        for _ in stream:
            pass
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None


def test_one_fault_ends_every_live_stream_and_the_engine_recovers(folder, monkeypatch):
    executor = executor_with_faults(folder, monkeypatch, "0:6")
    try:
        streams = [executor.submit(long_request(i)) for i in range(3)]
        started = time.monotonic()
        errors = [drain(stream) for stream in streams]
        assert time.monotonic() - started < 5
        assert all(isinstance(e, Unavailable) and "InjectedFault" in str(e) for e in errors)
        assert executor.stats().num_free_blocks == executor.stats().num_total_blocks
        assert executor.failure is None
        done = executor.generate([Request("after", [1, 2], SamplingParams(max_new_tokens=3))])
        assert len(done["after"]) == 3
    finally:
        executor.shutdown()


def test_repeated_faults_make_the_engine_give_up_and_say_so(folder, monkeypatch):
    executor = executor_with_faults(folder, monkeypatch, "0:1+")
    told = threading.Event()
    executor.on_failure = lambda exc: told.set()
    try:
        for attempt in range(MAX_CONSECUTIVE_STEP_FAILURES):
            assert isinstance(drain(executor.submit(long_request(attempt))), Unavailable)
        assert told.wait(5)
        assert isinstance(executor.failure, InjectedFault)
        with pytest.raises(Unavailable, match="engine failed"):
            executor.submit(long_request(99))
    finally:
        executor.shutdown()


def test_out_of_memory_in_a_step_is_resource_exhausted(folder, monkeypatch):
    executor = executor_with_faults(folder, monkeypatch, "0:2:oom")
    try:
        assert isinstance(drain(executor.submit(long_request(0))), CapacityExceeded)
    finally:
        executor.shutdown()


def test_fault_specs_pick_their_rank_and_steps():
    faults = StepFaults.from_env(1, {ENV: "0:1,1:2,1:4+"})
    raised = []
    for step in range(1, 7):
        try:
            faults.before_step()
        except InjectedFault:
            raised.append(step)
    assert raised == [2, 4, 5, 6]
    with pytest.raises(ValueError, match="RANK:STEP"):
        StepFaults.from_env(0, {ENV: "0:1:segfault"})
