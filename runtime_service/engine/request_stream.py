"""The outputs of one request, delivered from the step-loop thread to any consumer.

Created inside a running event loop it delivers through that loop (`async for`, or `batches()`
to take every ready output at once); otherwise through a plain thread-safe queue (`for`).
Leaving early (close) aborts the request.

Every step hands one output to each live stream. Waking an event loop once per output (a
`call_soon_threadsafe` each: a self-pipe write and a loop iteration, on the GIL the step loop
needs too) left a pod serving 256 streams at 70% of the in-process throughput on an H100. So
the streams of one loop share a `_LoopMailbox`: outputs are posted to it, and only the post that
finds it empty wakes the loop, which then delivers everything posted by then in one callback
(88% at 256 streams; bench/NOTES.md, run 10).
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Callable

from runtime_service.engine.request import RequestOutput


class _LoopMailbox:
    """Hands items from other threads to asyncio queues of one loop, one wakeup per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._items: collections.deque = collections.deque()
        self._wakeup_pending = False

    def post(self, target: asyncio.Queue, item) -> None:
        with self._lock:
            self._items.append((target, item))
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            pass                        # the loop is closed; nobody is listening

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, collections.deque()
            self._wakeup_pending = False
        for target, item in items:
            target.put_nowait(item)


_mailboxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_mailboxes_lock = threading.Lock()


def _mailbox_for(loop: asyncio.AbstractEventLoop) -> _LoopMailbox:
    with _mailboxes_lock:
        mailbox = _mailboxes.get(loop)
        if mailbox is None:
            mailbox = _mailboxes[loop] = _LoopMailbox(loop)
        return mailbox


class RequestStream:
    """Outputs of one request, in order; iterate with `for` or `async for`."""

    def __init__(self, request_id: str, abort: Callable[[str], bool]):
        self.request_id = request_id
        self._abort = abort
        self.finished = False
        try:
            self._mailbox: _LoopMailbox | None = _mailbox_for(asyncio.get_running_loop())
            self._async_queue: asyncio.Queue = asyncio.Queue()
        except RuntimeError:
            self._mailbox = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._held_error: BaseException | None = None   # met while draining in `batches`

    def _push(self, item: RequestOutput | BaseException) -> None:
        if self._mailbox is None:
            self._queue.put(item)
        else:
            self._mailbox.post(self._async_queue, item)

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
        return self._take(await self._next_item())

    async def _next_item(self):
        if self._held_error is not None:
            error, self._held_error = self._held_error, None
            return error
        return await self._async_queue.get()

    async def batches(self) -> AsyncIterator[list[RequestOutput]]:
        """Like `async for`, but each iteration yields every output that is ready (at least
        one), in order: a consumer that fell behind catches up in one pass. An error raises
        after the outputs that came before it."""
        while not self.finished:
            batch = [self._take(await self._next_item())]
            while not self.finished and not self._async_queue.empty():
                item = self._async_queue.get_nowait()
                if isinstance(item, BaseException):
                    self._held_error = item
                    break
                batch.append(self._take(item))
            yield batch

    def close(self) -> None:
        if not self.finished:
            self._abort(self.request_id)
