"""The pod's engine-core client against a scripted core on the other end of a socketpair: what
it sends, how step messages reach streams, and what a dead or failed core does to them."""

from __future__ import annotations

import dataclasses
import socket
import threading

import pytest

from runtime_service.engine import core_codec as codec
from runtime_service.engine.executor_options import ExecutorOptions, ExecutorStats
from runtime_service.engine.request import FinishReason, Request, RequestOutput, SamplingParams
from runtime_service.engine.validation import EngineLimits
from runtime_service.errors import (CapacityExceeded, CorruptEngine, InvalidRequest, KilnError,
                                    Unavailable)
from runtime_service.format.engine_config import BuildConfig, EngineConfig
from runtime_service.format.model_config import ModelArgs
from runtime_service.server.core_client import EngineCoreClient
from runtime_service.server.core_pipe import FramedSocket

STATS = ExecutorStats(num_free_blocks=8, num_total_blocks=8, num_live_requests=0, num_waiting=0,
                      num_running=0, num_steps=3, num_preemptions=0, peak_running=1)


class ScriptedProcess:
    """Stands in for the core's Popen: the test decides its exit code."""

    pid = 12345

    def __init__(self):
        self.code = None

    def wait(self, timeout=None):
        return self.code

    def kill(self):
        self.code = -9


def started_message(world_size: int = 1) -> dict:
    model = ModelArgs(vocab_size=100, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=2, head_dim=8)
    return {"config": EngineConfig(model).to_dict(),
            "build": dataclasses.asdict(BuildConfig(dtype="float32")),
            "limits": dataclasses.asdict(EngineLimits(100, 64, 128, 256, 1, 128)),
            "block_size": 4, "world_size": world_size, "tokenizer_dir": None,
            "stats": codec.encode_stats(STATS)}


@pytest.fixture
def wired():
    ours, theirs = socket.socketpair()
    process = ScriptedProcess()
    client = EngineCoreClient(process, FramedSocket(ours), started_message(),
                              ExecutorOptions(max_queue_size=2))
    failures = []
    client.on_failure = failures.append
    core = FramedSocket(theirs)
    yield client, core, process, failures
    stop(client, core, process)


def stop(client, core, process) -> None:
    """Shuts the client down the way the core answers: SHUTDOWN in, exit code 0, EOF."""
    done = threading.Thread(target=lambda: client.shutdown(timeout_s=5))
    done.start()
    try:
        while core.recv()[0] != codec.SHUTDOWN:
            pass
    except (EOFError, OSError):
        pass                    # already closed by the test
    process.code = 0
    core.close()
    done.join(10)


def step(*outputs, errors=(), stats=None) -> bytes:
    return codec.encode_step(codec.StepMessage(outputs=list(outputs), errors=list(errors),
                                               stats=stats))


def test_the_client_describes_the_engine_as_an_executor_does(wired):
    client, *_ = wired
    assert client.kv.block_size == 4 and client.ranks is None
    assert client.build.dtype == "float32" and client.limits.vocab_size == 100
    assert client.config.model.vocab_size == 100 and client.tokenizer is None
    assert client.stats() == STATS


def test_a_submitted_request_crosses_and_its_outputs_come_back_in_order(wired):
    client, core, _, _ = wired
    request = Request("r1", [1, 2, 3], SamplingParams(max_new_tokens=2))
    stream = client.submit(request)
    kind, body = core.recv()
    assert kind == codec.SUBMIT and codec.decode_request(body) == request
    assert client.stats().num_live_requests == 1
    first = RequestOutput("r1", 0, (7,))
    last = RequestOutput("r1", 1, (8,), finished=True, finish_reason=FinishReason.LENGTH)
    core.send(codec.STEP, step(first, stats=dataclasses.replace(STATS, num_steps=9)))
    core.send(codec.STEP, step(last))
    assert list(stream) == [first, last]
    assert client.stats().num_live_requests == 0 and client.stats().num_steps == 9


def test_an_error_from_the_core_ends_its_stream_with_the_same_class(wired):
    client, core, _, _ = wired
    stream = client.submit(Request("r1", [1], SamplingParams(max_new_tokens=2)))
    core.recv()
    core.send(codec.STEP, step(errors=[("r1", CapacityExceeded("out of device memory"))]))
    with pytest.raises(CapacityExceeded, match="out of device memory"):
        next(stream)


def test_requests_are_checked_before_anything_is_sent(wired):
    client, *_ = wired
    with pytest.raises(InvalidRequest):
        client.submit(Request("bad", [500], SamplingParams()))         # token id over the vocab
    client.submit(Request("a", [1]))
    with pytest.raises(InvalidRequest, match="already running"):
        client.submit(Request("a", [1]))
    client.submit(Request("b", [1]))
    with pytest.raises(CapacityExceeded, match="queue is full"):
        client.submit(Request("c", [1]))


def test_abort_sends_an_abort_for_a_live_request_only(wired):
    client, core, _, _ = wired
    client.submit(Request("a", [1]))
    core.recv()
    assert client.abort("a") is True
    assert core.recv() == (codec.ABORT, b"a")
    assert client.abort("unknown") is False


def test_a_core_that_dies_ends_every_stream_with_unavailable_once(wired):
    client, core, process, failures = wired
    streams = [client.submit(Request(name, [1])) for name in ("a", "b")]
    process.code = -9
    core.close()
    for stream in streams:
        with pytest.raises(Unavailable, match=r"engine core process exited \(code -9\)"):
            next(stream)
    assert client.process_lost
    assert len(failures) == 1 and isinstance(failures[0], Unavailable)
    with pytest.raises(Unavailable, match="engine failed"):
        client.submit(Request("c", [1]))


def test_a_core_that_gave_up_fails_its_streams_but_stays_a_live_process(wired):
    client, core, _, failures = wired
    stream = client.submit(Request("a", [1]))
    core.recv()
    core.send(codec.FAILED, codec.dumps(codec.encode_error(RuntimeError("CUDA error"))))
    with pytest.raises(Unavailable, match="CUDA error"):
        next(stream)
    [cause] = failures
    assert type(cause) is KilnError and not client.process_lost
    assert client.abort("a") is False


def test_shutdown_is_not_a_failure(wired):
    client, core, process, failures = wired
    stop(client, core, process)
    assert failures == [] and not client.process_lost


def test_a_typed_start_error_names_its_class():
    assert type(codec.decode_error(codec.encode_error(CorruptEngine("bad sha")))) is CorruptEngine


def test_a_core_that_stops_reading_never_blocks_the_caller_and_gets_every_message_in_order():
    """Messages go out from the caller's thread while the socket takes them whole; once it is
    full, the rest (and everything after it) waits for the writer thread, in order."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    process = ScriptedProcess()
    client = EngineCoreClient(process, FramedSocket(ours), started_message(),
                              ExecutorOptions(max_queue_size=200))
    core = FramedSocket(theirs)
    ids = [f"r{i}" for i in range(150)]
    submitting = threading.Thread(target=lambda: [
        client.submit(Request(i, [1 + n % 60 for n in range(60)])) for i in ids])
    submitting.start()
    submitting.join(30)                 # the core reads nothing meanwhile: no caller may wait
    assert not submitting.is_alive()
    assert client._queued > 0           # the socket filled: the writer holds the rest
    assert client.abort("r0") is True
    got = [core.recv() for _ in range(len(ids) + 1)]
    assert [codec.decode_request(body).request_id for _, body in got[:-1]] == ids
    assert got[-1] == (codec.ABORT, b"r0")
    stop(client, core, process)
