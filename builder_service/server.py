"""The Builder gRPC service (grpc.aio): builds, engine listing and content-addressed uploads.

Builds run on a bounded thread pool (`max_concurrent_builds`); their progress crosses into the
event loop through a queue, so many clients can stream at once while the loop stays free. Errors
become gRPC status codes in status.py only. Health (grpc.health.v1) and server reflection are
served beside it, so grpcurl works without the proto files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from kiln.v1 import builder_pb2, builder_pb2_grpc

from runtime_service.server.auth import TransportSecurity
from runtime_service.server.lenient import lenient, parsed
from runtime_service.errors import Cancelled, CapacityExceeded, InvalidRequest
from runtime_service.server.metrics import MetricsEndpoint, MetricsServer
from runtime_service.server.tracing import SERVICE_BUILDER, Tracing
from runtime_service.store import S3Settings, open_store

from builder_service.builder import EngineBuilder
from builder_service.metrics import BuilderMetrics, BuildObserver
from builder_service.messages import (engine_summary, file_list, progress_event, result_event,
                                      spec_from_request)
from builder_service.pipeline import BuildProgress
from builder_service.progress import TEST_PAUSE_ENV
from builder_service.sources import SourceResolver
from builder_service.status import grpc_status
from builder_service.uploads import UPLOAD_SCHEME, UploadArea, UploadLimits, check_file_list

log = logging.getLogger("kiln.builder")
SERVICE_NAME = builder_pb2.DESCRIPTOR.services_by_name["Builder"].full_name
PAUSE_LIMIT_S = 60.0        # how long TEST_PAUSE_ENV holds a build that is never cancelled


@dataclass(frozen=True)
class ServerOptions:
    store_uri: str
    work_dir: Path
    listen: str = "127.0.0.1:50052"
    allowed_roots: tuple[Path, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None
    max_concurrent_builds: int = 2
    upload_limits: UploadLimits = field(default_factory=UploadLimits)
    s3_settings: S3Settings | None = None
    metrics_listen: str = ""            # HOST:PORT for Prometheus /metrics; empty: none
    otlp_endpoint: str = ""             # OTLP/gRPC traces; empty: OTEL_EXPORTER_OTLP_ENDPOINT

    def __post_init__(self):
        if self.max_concurrent_builds < 1:
            raise InvalidRequest("max_concurrent_builds must be >= 1")
        if self.metrics_listen:
            MetricsEndpoint.parse(self.metrics_listen)

    @property
    def security(self) -> TransportSecurity:
        return TransportSecurity(self.tls_cert, self.tls_key, self.token)


class BuilderServicer(builder_pb2_grpc.BuilderServicer):
    def __init__(self, builder: EngineBuilder, uploads: UploadArea, max_concurrent_builds: int,
                 observer: BuildObserver | None = None):
        self.builder = builder
        self.uploads = uploads
        self.observer = observer or BuildObserver()
        self._pool = ThreadPoolExecutor(max_concurrent_builds, thread_name_prefix="kiln-build")
        self._pause_at = os.environ.get(TEST_PAUSE_ENV) or None

    async def Build(self, request, context):
        started = time.monotonic()
        source = getattr(request, "source", "?")        # "?" when the bytes did not parse
        record = self.observer.start(context.invocation_metadata(), source)
        cancelled = threading.Event()
        try:
            spec = spec_from_request(parsed(request))
            queued = BuildProgress("queued", 0, 0, "", "waiting for a build slot")
            record.progress(queued)
            yield progress_event(queued)
            loop = asyncio.get_running_loop()
            events: asyncio.Queue = asyncio.Queue()

            def report(p: BuildProgress) -> None:          # on the build's thread
                # The build thread stops at its next step (a layer) once the caller is gone;
                # the pipeline removes its partial folder on the way out.
                if cancelled.is_set():
                    raise Cancelled(f"build of {spec.source} cancelled by the caller")
                record.progress(p)
                loop.call_soon_threadsafe(events.put_nowait, p)
                if p.stage == self._pause_at:      # the test hook: the caller has this event
                    cancelled.wait(PAUSE_LIMIT_S)

            job = loop.run_in_executor(self._pool, self.builder.build, spec, report)
            while True:
                next_event = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({next_event, job},
                                             return_when=asyncio.FIRST_COMPLETED)
                if next_event in done:
                    yield progress_event(next_event.result())
                    continue
                next_event.cancel()
                break
            while not events.empty():
                yield progress_event(events.get_nowait())
            outcome = job.result()
            record.finish("cached" if outcome.cached else "built", outcome.engine.engine_key)
            yield result_event(outcome)
        except Exception as exc:
            code, message = grpc_status(exc)
            log.info("build source=%s status=%s seconds=%.2f: %s",
                     source, code.name,
                     time.monotonic() - started, message)
            record.finish(code.name)
            await context.abort(code, message)
        finally:
            # The client left (cancel, deadline, disconnect). grpc.aio's cancel reaches this
            # generator as CancelledError only while it awaits; one that lands while gRPC
            # sends a yielded event closes it at that yield (GeneratorExit). Both end here.
            if not record.finished:
                cancelled.set()
                record.finish("CANCELLED")

    async def _unary(self, context, fn, *args):
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            await context.abort(*grpc_status(exc))

    async def GetEngine(self, request, context):
        return engine_summary(await self._unary(
            context, lambda: self.builder.describe(parsed(request).engine)))

    async def ListEngines(self, request, context):
        def listed():
            parsed(request)
            return self.builder.list_engines()
        engines = await self._unary(context, listed)
        return builder_pb2.ListEnginesResponse(engines=[engine_summary(e) for e in engines])

    async def DeleteEngine(self, request, context):
        key = await self._unary(context, lambda: self.builder.delete(parsed(request).engine))
        log.info("delete key=%s", key)
        return builder_pb2.DeleteEngineResponse(engine_key=key)

    async def FindMissingBlobs(self, request, context):
        missing = await self._unary(context,
                                    lambda: self.uploads.missing(list(parsed(request).sha256)))
        return builder_pb2.FindMissingBlobsResponse(missing=missing)

    async def UploadSource(self, request_iterator, context):
        writers = {}
        try:
            files, received = await self._receive_upload(request_iterator, writers)
            ident = await asyncio.to_thread(self.uploads.assemble, files)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await context.abort(*grpc_status(exc))
        finally:
            for writer in writers.values():
                writer.abandon()
        log.info("upload id=%s files=%d received_bytes=%d", ident, len(files), received)
        return builder_pb2.SourceRef(source_id=ident, uri=f"{UPLOAD_SCHEME}://{ident}",
                                     size_bytes=sum(f.size_bytes for f in files),
                                     received_bytes=received, num_files=len(files))

    async def _receive_upload(self, request_iterator, writers: dict):
        limits = self.uploads.limits
        files, sizes, finished, received = None, {}, set(), 0
        async for chunk in request_iterator:
            chunk = parsed(chunk)
            kind = chunk.WhichOneof("kind")
            if files is None:
                if kind != "files":
                    raise InvalidRequest("an upload starts with its file list")
                files = file_list(chunk.files)
                check_file_list(files, limits)
                for entry in files:
                    if sizes.setdefault(entry.sha256, entry.size_bytes) != entry.size_bytes:
                        raise InvalidRequest(f"blob {entry.sha256[:12]} is listed with two sizes")
                continue
            if kind != "blob":
                raise InvalidRequest("the file list may be sent only once")
            blob = chunk.blob
            if blob.sha256 not in sizes:
                raise InvalidRequest(f"blob {blob.sha256[:12]} is not in the file list")
            if blob.sha256 in finished:
                raise InvalidRequest(f"blob {blob.sha256[:12]} was already sent")
            if len(blob.data) > limits.max_chunk_bytes:
                raise CapacityExceeded(f"chunks are limited to {limits.max_chunk_bytes} bytes")
            writer = writers.get(blob.sha256)
            if writer is None:
                writer = writers[blob.sha256] = self.uploads.new_blob(blob.sha256,
                                                                      sizes[blob.sha256])
            writer.write(blob.offset, blob.data)
            received += len(blob.data)
            if writer.complete:
                del writers[blob.sha256]
                await asyncio.to_thread(writer.finish)
                finished.add(blob.sha256)
        if files is None:
            raise InvalidRequest("empty upload: no file list")
        if writers:
            raise InvalidRequest(f"upload ended inside blob {next(iter(writers))[:12]}")
        return files, received

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def generic_handler(servicer: BuilderServicer) -> grpc.GenericRpcHandler:
    """The Builder's method table with lenient parsing: undecodable bytes are INVALID_ARGUMENT
    (the generated table answers UNKNOWN, or INTERNAL on the UploadSource stream)."""
    m = builder_pb2
    serialize = lambda message: message.SerializeToString()  # noqa: E731
    unary = {"GetEngine": m.GetEngineRequest, "ListEngines": m.ListEnginesRequest,
             "DeleteEngine": m.DeleteEngineRequest, "FindMissingBlobs": m.FindMissingBlobsRequest}
    handlers = {name: grpc.unary_unary_rpc_method_handler(
        getattr(servicer, name), request_deserializer=lenient(cls), response_serializer=serialize)
        for name, cls in unary.items()}
    handlers["Build"] = grpc.unary_stream_rpc_method_handler(
        servicer.Build, request_deserializer=lenient(m.BuildRequest), response_serializer=serialize)
    handlers["UploadSource"] = grpc.stream_unary_rpc_method_handler(
        servicer.UploadSource, request_deserializer=lenient(m.SourceChunk),
        response_serializer=serialize)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def make_builder(options: ServerOptions) -> tuple[EngineBuilder, UploadArea]:
    work_dir = Path(options.work_dir)
    uploads = UploadArea(work_dir / "uploads", options.upload_limits)
    sources = SourceResolver(work_dir, list(options.allowed_roots), options.s3_settings, uploads)
    store = open_store(options.store_uri, options.s3_settings)
    return EngineBuilder(store, sources, work_dir), uploads


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int                  # the bound port, useful with port 0
    servicer: BuilderServicer
    health: health.aio.HealthServicer
    metrics_server: MetricsServer | None = None
    tracing: Tracing = field(default_factory=Tracing.off)

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port if self.metrics_server is not None else 0

    async def stop(self, grace_s: float = 30.0) -> None:
        """Reports NOT_SERVING, then drains in-flight calls for up to grace_s."""
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)
        self.servicer.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.tracing.shutdown()


async def start_server(options: ServerOptions, tracing: Tracing | None = None) -> RunningServer:
    builder, uploads = make_builder(options)
    metrics = BuilderMetrics() if options.metrics_listen else None
    tracing = tracing or Tracing.from_settings(options.otlp_endpoint, SERVICE_BUILDER)
    servicer = BuilderServicer(builder, uploads, options.max_concurrent_builds,
                               BuildObserver(metrics, tracing))
    message_bytes = options.upload_limits.max_chunk_bytes + (1 << 16)
    security = options.security
    server = grpc.aio.server(
        interceptors=security.interceptors(),
        options=[("grpc.max_receive_message_length", message_bytes),
                 ("grpc.max_send_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((generic_handler(servicer),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = security.add_port(server, options.listen)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_server = (MetricsServer(metrics.registry, MetricsEndpoint.parse(options.metrics_listen))
                      if metrics is not None else None)
    return RunningServer(server, port, servicer, health_servicer, metrics_server, tracing)


async def serve(options: ServerOptions, grace_s: float = 30.0) -> None:
    """Runs until SIGTERM or SIGINT, then reports NOT_SERVING and drains for `grace_s`."""
    running = await start_server(options)
    where = options.listen if options.listen.startswith("unix:") else \
        f"{options.listen.rsplit(':', 1)[0]}:{running.port}"
    print(f"kiln builder listening on {where} store={options.store_uri}", flush=True)
    if running.metrics_server is not None:
        print(f"kiln builder metrics on http://{MetricsEndpoint.parse(options.metrics_listen).host}"
              f":{running.metrics_port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop(grace_s)
