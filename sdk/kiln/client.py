"""gRPC clients of the Runtime and the Builder, on one background event loop per LLM.

The SDK's public calls are synchronous or futures; underneath, grpc.aio runs on a private loop
thread so many concurrent streams cost no threads. Every RPC error becomes a kiln.errors type in
one place (`_call`). Endpoints: "host:port" or "unix:/path"; TLS when a CA file is given; a bearer
token when one is given (also from KILN_TOKEN / KILN_TLS_CA_FILE).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.errors import DataLoss, InvalidArgument, from_rpc_error
from kiln.result import _END, GenerationResult
from kiln.v1 import builder_pb2, builder_pb2_grpc, runtime_pb2, runtime_pb2_grpc

MAX_MESSAGE_BYTES = 64 << 20
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


@dataclass(frozen=True)
class Endpoint:
    address: str
    token: str | None = None
    ca_file: str | None = None

    def __post_init__(self):
        if not self.address or any(c.isspace() for c in self.address):
            raise InvalidArgument(f"endpoint address must be host:port or unix:/path, got "
                                  f"{self.address!r}")

    @classmethod
    def from_env(cls, address: str) -> "Endpoint":
        return cls(address, os.environ.get("KILN_TOKEN") or None,
                   os.environ.get("KILN_TLS_CA_FILE") or None)

    @property
    def metadata(self) -> tuple:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self) -> grpc.aio.Channel:
        if self.ca_file:
            credentials = grpc.ssl_channel_credentials(Path(self.ca_file).read_bytes())
            return grpc.aio.secure_channel(self.address, credentials, options=CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)


class LoopThread:
    """A private asyncio loop on a daemon thread; `run` blocks on a coroutine, `spawn` does not."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kiln-grpc",
                                        daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


async def _call(coro):
    try:
        return await coro
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None


class _Client:
    def __init__(self, endpoint: Endpoint, loop: LoopThread):
        self.endpoint = endpoint
        self.loop = loop
        self.channel = loop.run(self._open())

    async def _open(self):
        return self.endpoint.channel()

    def _unary(self, method, request, timeout_s: float | None = 60.0):
        async def call():
            return await method(request, metadata=self.endpoint.metadata, timeout=timeout_s)
        return self.loop.run(_call(call()))

    def health(self, service: str = "", timeout_s: float = 5.0) -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        try:
            self.loop.run(self.channel.close(), timeout=5)
        except Exception:  # noqa: BLE001 - closing a channel on a stopping loop is best effort
            pass


class RuntimeClient(_Client):
    def __init__(self, endpoint: Endpoint, loop: LoopThread):
        super().__init__(endpoint, loop)
        self.stub = runtime_pb2_grpc.RuntimeStub(self.channel)

    def server_info(self) -> runtime_pb2.ServerInfo:
        return self._unary(self.stub.GetServerInfo, runtime_pb2.GetServerInfoRequest())

    def model_info(self) -> runtime_pb2.ModelInfo:
        return self._unary(self.stub.GetModelInfo, runtime_pb2.GetModelInfoRequest())

    def load_engine(self, uri: str, options: runtime_pb2.RuntimeOptions,
                    timeout_s: float = 1800.0) -> runtime_pb2.ModelInfo:
        return self._unary(self.stub.LoadEngine,
                           runtime_pb2.LoadEngineRequest(engine_uri=uri, options=options), timeout_s)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        request = runtime_pb2.TokenizeRequest(text=text, add_special_tokens=add_special_tokens)
        return list(self._unary(self.stub.Tokenize, request).token_ids)

    def abort(self, request_id: str) -> bool:
        return self._unary(self.stub.Abort, runtime_pb2.AbortRequest(request_id=request_id)).aborted

    def generate(self, request: runtime_pb2.GenerateRequest, prompt, prompt_token_ids,
                 decode=None, timeout_s: float | None = None) -> GenerationResult:
        """Starts a Generate call; the returned result fills in as responses arrive."""
        if not request.request_id:
            request.request_id = uuid.uuid4().hex
        holder = {}

        def cancel_call():          # on the loop; a cancel before the call exists waits for it
            holder["cancelled"] = True
            if "call" in holder:
                holder["call"].cancel()
        result = GenerationResult(request.request_id, prompt, prompt_token_ids, request.streaming,
                                  decode, cancel=lambda: self.loop.loop.call_soon_threadsafe(
                                      cancel_call))

        async def pump():
            call = self.stub.Generate(request, metadata=self.endpoint.metadata, timeout=timeout_s)
            holder["call"] = call
            if holder.get("cancelled"):
                call.cancel()
            try:
                async for response in call:
                    result._deliver(response)
                result._deliver(_END)
            except grpc.aio.AioRpcError as exc:
                result._deliver(from_rpc_error(exc))
            except asyncio.CancelledError:
                result._deliver(from_rpc_error_cancelled())
            except BaseException as exc:  # noqa: BLE001 - the caller must see every failure
                result._deliver(exc)

        self.loop.spawn(pump())
        return result

    def export_engine(self, folder: Path, timeout_s: float = 3600.0) -> list[str]:
        """Writes the served engine's files into `folder` (manifest last), checking each sha256."""
        return self.loop.run(self._export(Path(folder), timeout_s))

    async def _export(self, folder: Path, timeout_s: float) -> list[str]:
        written, handle, digest, expected, current = [], None, None, "", None
        call = self.stub.ExportEngine(runtime_pb2.ExportEngineRequest(),
                                      metadata=self.endpoint.metadata, timeout=timeout_s)
        try:
            async for chunk in call:
                if chunk.offset == 0:
                    _finish_file(handle, digest, expected, current)
                    current = _safe_join(folder, chunk.path)
                    current.parent.mkdir(parents=True, exist_ok=True)
                    handle, digest, expected = open(current, "wb"), hashlib.sha256(), chunk.sha256
                    written.append(chunk.path)
                handle.write(chunk.data)
                digest.update(chunk.data)
            _finish_file(handle, digest, expected, current)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            if handle is not None and not handle.closed:
                handle.close()
        return written


def from_rpc_error_cancelled():
    from kiln.errors import Cancelled
    return Cancelled("the request was cancelled")


def _safe_join(folder: Path, relative: str) -> Path:
    parts = relative.split("/")
    if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DataLoss(f"the server sent an unsafe path {relative!r}")
    return folder.joinpath(*parts)


def _finish_file(handle, digest, expected: str, path) -> None:
    if handle is None:
        return
    handle.close()
    if expected and digest.hexdigest() != expected:
        raise DataLoss(f"{path} arrived with the wrong sha256")


class BuilderClient(_Client):
    def __init__(self, endpoint: Endpoint, loop: LoopThread):
        super().__init__(endpoint, loop)
        self.stub = builder_pb2_grpc.BuilderStub(self.channel)

    def build(self, request: builder_pb2.BuildRequest, on_progress=None,
              timeout_s: float | None = None) -> builder_pb2.BuildResult:
        """Runs a Build, calling on_progress(BuildProgress) per event; returns its result."""
        async def run():
            result = None
            call = self.stub.Build(request, metadata=self.endpoint.metadata, timeout=timeout_s)
            async for event in call:
                if event.HasField("progress") and on_progress is not None:
                    on_progress(event.progress)
                elif event.HasField("result"):
                    result = event.result
            return result
        result = self.loop.run(_call(run()))
        if result is None:
            raise DataLoss("the builder ended the build without a result")
        return result

    def upload_folder(self, folder: Path, chunk_bytes: int = 1 << 20) -> builder_pb2.SourceRef:
        """Sends a local folder to a remote builder; blobs it already holds are not resent."""
        files = []
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while data := handle.read(chunk_bytes):
                    digest.update(data)
            files.append(builder_pb2.SourceFile(path=path.relative_to(folder).as_posix(),
                                                sha256=digest.hexdigest(),
                                                size_bytes=path.stat().st_size))
        missing = set(self._unary(self.stub.FindMissingBlobs, builder_pb2.FindMissingBlobsRequest(
            sha256=sorted({f.sha256 for f in files}))).missing)
        by_sha = {f.sha256: Path(folder) / f.path for f in files}

        async def chunks():
            yield builder_pb2.SourceChunk(files=builder_pb2.SourceFileList(files=files))
            for sha in sorted(missing):
                with open(by_sha[sha], "rb") as handle:
                    offset = 0
                    while True:
                        data = handle.read(chunk_bytes)
                        if not data and offset:
                            break
                        yield builder_pb2.SourceChunk(blob=builder_pb2.BlobChunk(
                            sha256=sha, offset=offset, data=data))
                        offset += len(data)
                        if not data:
                            break

        async def upload():
            return await self.stub.UploadSource(chunks(), metadata=self.endpoint.metadata)
        return self.loop.run(_call(upload()))

    def list_engines(self) -> list:
        return list(self._unary(self.stub.ListEngines, builder_pb2.ListEnginesRequest()).engines)

    def get_engine(self, engine: str):
        return self._unary(self.stub.GetEngine, builder_pb2.GetEngineRequest(engine=engine))

    def delete_engine(self, engine: str) -> str:
        request = builder_pb2.DeleteEngineRequest(engine=engine)
        return self._unary(self.stub.DeleteEngine, request).engine_key
