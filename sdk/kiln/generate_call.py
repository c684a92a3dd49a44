"""One Generate call of the SDK, on the client's event loop: started, cancelled (even before it
exists), and resumed on another replica when its pod fails mid-stream (kiln/resume.py)."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from kiln.errors import Cancelled, from_rpc_error
from kiln.result import _END, GenerationResult
from kiln.resume import StreamProgress
from kiln.v1 import runtime_pb2

log = logging.getLogger("kiln")


class GenerateCall:
    """One Generate call on the client's loop. A cancel is remembered, so one that arrives
    before the gRPC call exists (right after `generate_async()`) still cancels it. A stream whose
    replica fails mid-way resumes on the next replica (kiln/resume.py), at most twice per
    replica."""

    def __init__(self, client, request: runtime_pb2.GenerateRequest,
                 timeout_s: float | None):
        self.client = client
        self.request = request
        self.timeout_s = timeout_s
        self.result: GenerationResult | None = None
        self.cancelled = False
        self._call = None

    def cancel(self) -> None:
        """From any thread: cancels the call now, or as soon as it starts."""
        self.client.loop.loop.call_soon_threadsafe(self._cancel_on_loop)

    def _cancel_on_loop(self) -> None:
        self.cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def pump(self) -> None:
        result = self.result
        try:
            await self._run()
            result._deliver(_END)
        except grpc.aio.AioRpcError as exc:
            result._deliver(from_rpc_error(exc))
        except asyncio.CancelledError:
            result._deliver(Cancelled("the request was cancelled"))
        except BaseException as exc:  # noqa: BLE001 - the caller must see every failure
            result._deliver(exc)

    async def _run(self) -> None:
        targets = self.client.generate_targets()
        progress = StreamProgress(self.request)
        request, attempt = self.request, 0
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            stub, metadata = targets[attempt % len(targets)]
            if self.cancelled:
                raise asyncio.CancelledError
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._call = stub.Generate(request, metadata=metadata, timeout=timeout)
            if self.cancelled:
                self._call.cancel()
            try:
                async for response in self._call:
                    self.result._deliver(progress.translate(response))
                return
            except grpc.aio.AioRpcError as exc:
                attempt += 1
                if (attempt >= 2 * len(targets) or len(targets) == 1
                        or not progress.can_resume(exc.code(), self.cancelled)):
                    raise
                log.warning("generate id=%s failed on a replica (%s); resuming after %d tokens",
                            self.request.request_id, exc.code().name, len(progress.tokens))
            if progress.remaining_tokens() == 0:
                self.result._deliver(progress.finished_complete())
                return
            await asyncio.sleep(self.client.resume_backoff_s)
            stub, metadata = targets[attempt % len(targets)]
            request = progress.resumed_request(await self._prompt_ids(stub, metadata))

    async def _prompt_ids(self, stub, metadata) -> list[int]:
        if self.request.WhichOneof("input") == "token_ids":
            return list(self.request.token_ids.ids)
        reply = await stub.Tokenize(runtime_pb2.TokenizeRequest(text=self.request.text),
                                    metadata=metadata, timeout=60)
        return list(reply.token_ids)
