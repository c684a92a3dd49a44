"""RequestStream delivery from the step-loop thread into an event loop: order, batching, errors,
and one loop wakeup per burst of outputs rather than one per output."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runtime_service.engine import request_stream
from runtime_service.errors import Unavailable
from runtime_service.engine.request import RequestOutput
from runtime_service.engine.request_stream import RequestStream


def output(i: int, offset: int, finished: bool = False) -> RequestOutput:
    return RequestOutput(f"r{i}", offset, (offset,), finished=finished)


def test_interleaved_streams_each_get_their_outputs_in_order():
    async def main():
        streams = [RequestStream(f"r{i}", lambda _: True) for i in range(8)]

        def step_loop():
            for step in range(50):
                for i, stream in enumerate(streams):
                    stream._push(output(i, step, finished=step == 49))

        async def offsets(stream):
            return [o.offset async for o in stream]

        thread = threading.Thread(target=step_loop)
        thread.start()
        got = await asyncio.gather(*(offsets(s) for s in streams))
        thread.join()
        return got

    assert asyncio.run(main()) == [list(range(50))] * 8


def test_one_wakeup_for_a_burst_posted_while_the_loop_is_busy(monkeypatch):
    async def main():
        loop = asyncio.get_running_loop()
        wakeups = []
        real = loop.call_soon_threadsafe
        monkeypatch.setattr(loop, "call_soon_threadsafe",
                            lambda *a: wakeups.append(a) or real(*a))
        streams = [RequestStream(f"r{i}", lambda _: True) for i in range(64)]
        thread = threading.Thread(target=lambda: [s._push(output(i, 0, True))
                                                  for i, s in enumerate(streams)])
        thread.start()
        thread.join()                   # the whole burst is posted before the loop runs again
        outs = await asyncio.gather(*(s.__anext__() for s in streams))
        return len(wakeups), [o.request_id for o in outs]

    wakeups, ids = asyncio.run(main())
    assert wakeups == 1
    assert ids == [f"r{i}" for i in range(64)]


def test_batches_yield_every_ready_output_and_raise_an_error_after_them():
    async def main():
        stream = RequestStream("r0", lambda _: True)
        for offset in range(3):
            stream._push(output(0, offset))
        stream._push(Unavailable("the step failed"))
        batches = []
        with pytest.raises(Unavailable):
            async for batch in stream.batches():
                batches.append([o.offset for o in batch])
        return batches, stream.finished

    assert asyncio.run(main()) == ([[0, 1, 2]], True)


def test_batches_stop_at_the_finished_output():
    async def main():
        stream = RequestStream("r0", lambda _: True)
        for offset in range(4):
            stream._push(output(0, offset, finished=offset == 3))
        return [[o.offset for o in batch] async for batch in stream.batches()]

    assert asyncio.run(main()) == [[0, 1, 2, 3]]


def test_posting_to_a_closed_loop_loses_nothing_else():
    loop = asyncio.new_event_loop()
    mailbox = request_stream._mailbox_for(loop)
    loop.close()
    mailbox.post(asyncio.Queue(), output(0, 0))          # no error: nobody is listening


def test_thread_consumers_still_use_a_plain_queue():
    stream = RequestStream("r0", lambda _: True)
    stream._push(output(0, 0))
    stream._push(output(0, 1, finished=True))
    assert [o.offset for o in stream] == [0, 1]
