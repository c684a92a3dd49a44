"""A cancel issued right after `generate_async()`, before the gRPC call exists, is not lost
(issue 15, defect 3: 13 of 30 such requests ran to their length limit)."""

from __future__ import annotations

import time

import pytest

from kiln.client import Endpoint, LoopThread, RuntimeClient
from kiln.errors import Cancelled
from kiln.v1 import runtime_pb2
from support.fake_runtime import EndlessRuntime, LoopbackServer


@pytest.fixture
def served():
    servicer = EndlessRuntime()
    server = LoopbackServer(servicer)
    loop = LoopThread()
    client = RuntimeClient(Endpoint(server.address), loop)
    yield servicer, client
    client.close()
    loop.close()
    server.stop()


def test_a_cancel_before_the_call_starts_cancels_it(served):
    servicer, client = served
    for attempt in range(5):
        # Hold the client's loop so the cancel lands before the call is made, every time.
        client.loop.loop.call_soon_threadsafe(time.sleep, 0.2)
        request = runtime_pb2.GenerateRequest(request_id=f"early-{attempt}", streaming=True)
        result = client.generate(request, "p", [1])
        result.cancel()
        with pytest.raises(Cancelled):
            result.result(timeout=10)


def test_a_cancel_mid_stream_reaches_the_server(served):
    servicer, client = served
    result = client.generate(runtime_pb2.GenerateRequest(request_id="mid", streaming=True),
                             "p", [1])
    next(iter(result))
    result.cancel()
    with pytest.raises(Cancelled):
        result.result(timeout=10)
    deadline = time.monotonic() + 10
    while "mid" not in servicer.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert servicer.cancelled == ["mid"]
