"""A scripted Runtime servicer on a loopback grpc.aio server, for SDK tests that need exact
control of what a server sends and when (no model, no engine)."""

from __future__ import annotations

import asyncio
import threading

import grpc

from kiln.v1 import runtime_pb2, runtime_pb2_grpc


class EndlessRuntime(runtime_pb2_grpc.RuntimeServicer):
    """Generate streams one token every `interval_s` until the client goes away; records the
    request ids it started and the ones whose client cancelled."""

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def Generate(self, request, context):
        self.started.append(request.request_id)
        try:
            for offset in range(100_000):
                yield runtime_pb2.GenerateResponse(request_id=request.request_id,
                                                   chunk=runtime_pb2.Chunk(offset=offset,
                                                                           token_ids=[7]))
                await asyncio.sleep(self.interval_s)
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise


class LoopbackServer:
    """A grpc.aio server for `servicer` on its own loop thread; `address` is where it listens."""

    def __init__(self, servicer):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = None
        port = asyncio.run_coroutine_threadsafe(self._start(servicer), self.loop).result(10)
        self.address = f"127.0.0.1:{port}"

    async def _start(self, servicer) -> int:
        self.server = grpc.aio.server()
        runtime_pb2_grpc.add_RuntimeServicer_to_server(servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
