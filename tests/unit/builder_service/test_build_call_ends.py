"""A Build call that ends without finishing stops its build, however it ends: grpc.aio cancels
the handler's task, which reaches the generator as CancelledError only while the generator
itself awaits; a cancel that lands while gRPC sends a yielded event closes the generator at
that yield instead (GeneratorExit). Either way the build thread must stop at its next step."""

from __future__ import annotations

import asyncio
import threading

import pytest

from builder_service.pipeline import BuildProgress
from builder_service.server import BuilderServicer
from kiln.v1 import builder_pb2
from runtime_service.errors import Cancelled


class _StepwiseBuilder:
    """Reports its first step, waits until the test lets it go on, then reports a step at a
    time until its report raises (or it runs out, which the test counts as not stopped)."""

    def __init__(self):
        self.go_on = threading.Event()
        self.stopped_by: BaseException | None = None
        self.done = threading.Event()

    def build(self, spec, report):
        try:
            report(BuildProgress("calibrate", 0, 100, "layers", ""))
            self.go_on.wait(30)
            for step in range(1, 100):
                report(BuildProgress("calibrate", step, 100, "layers", ""))
        except Cancelled as exc:
            self.stopped_by = exc
            raise
        finally:
            self.done.set()
        raise RuntimeError("the build ran to its end: nothing stopped it")


class _Context:
    def invocation_metadata(self):
        return ()

    async def abort(self, code, message):
        raise AssertionError(f"aborted: {code} {message}")


async def _leave(call, how: str) -> None:
    """The caller goes away after the first calibration event, as `how` says."""
    async for event in call:
        if event.progress.stage == "calibrate":
            break
    if how == "closed at a yield":
        await call.aclose()
    else:
        task = asyncio.ensure_future(call.__anext__())
        await asyncio.sleep(0.05)           # the generator is inside its own await
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("how", ["closed at a yield", "cancelled while awaiting"])
def test_a_call_that_ends_early_stops_its_build_at_the_next_step(how):
    builder = _StepwiseBuilder()
    servicer = BuilderServicer(builder, uploads=None, max_concurrent_builds=1)
    request = builder_pb2.BuildRequest(source="/models/m")
    asyncio.run(_leave(servicer.Build(request, _Context()), how))
    builder.go_on.set()
    assert builder.done.wait(30)
    assert isinstance(builder.stopped_by, Cancelled)
