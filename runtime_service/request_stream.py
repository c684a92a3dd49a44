"""The outputs of one request, delivered from the step-loop thread to any consumer.

Created inside a running event loop it delivers through that loop (`async for`); otherwise
through a plain thread-safe queue (`for`). Leaving early (close) aborts the request.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable

from runtime_service.request import RequestOutput


class RequestStream:
    """Outputs of one request, in order; iterate with `for` or `async for`."""

    def __init__(self, request_id: str, abort: Callable[[str], bool]):
        self.request_id = request_id
        self._abort = abort
        self.finished = False
        try:
            self._loop = asyncio.get_running_loop()
            self._async_queue: asyncio.Queue = asyncio.Queue()
        except RuntimeError:
            self._loop = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def _push(self, item: RequestOutput | BaseException) -> None:
        if self._loop is None:
            self._queue.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._async_queue.put_nowait, item)
        except RuntimeError:
            pass                        # the consumer's loop is gone; nobody is listening

    def _take(self, item: RequestOutput | BaseException) -> RequestOutput:
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item

    def __iter__(self):
        return self

    def __next__(self) -> RequestOutput:
        if self.finished:
            raise StopIteration
        return self._take(self._queue.get())

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        return self._take(await self._async_queue.get())

    def close(self) -> None:
        if not self.finished:
            self._abort(self.request_id)
