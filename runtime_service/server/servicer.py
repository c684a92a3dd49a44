"""The Runtime gRPC servicer: Generate streams, Abort, info, LoadEngine, Tokenize, ExportEngine.

Requests are parsed leniently (a payload that is not a valid message is INVALID_ARGUMENT, not
INTERNAL), every error leaves through rpc_errors, and a Generate whose call ends early (client
cancel, deadline, disconnect) aborts its engine request in `finally`, which frees its KV blocks at
the next step boundary. One structured log line per request, with its metrics and trace
(request_log.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from kiln.v1 import runtime_pb2

from runtime_service import __version__
from runtime_service.server import capabilities
from runtime_service.server.convert import engine_request
from runtime_service.format.engine_format import MANIFEST, read_manifest
from runtime_service.server.engine_host import EngineHost
from runtime_service.server.request_log import RequestObserver
from runtime_service.errors import FailedPrecondition, InvalidRequest, KilnError
from runtime_service.server.response_stream import ResponseAssembler
from runtime_service.server.lenient import lenient as _lenient
from runtime_service.server.lenient import parsed as _parsed
from runtime_service.server.rpc_errors import abort_with

log = logging.getLogger("kiln.runtime")

SERVICE_NAME = runtime_pb2.DESCRIPTOR.services_by_name["Runtime"].full_name
# A grpc.health.v1 name only (no RPCs): SERVING unless the step loop has work and makes no steps.
LIVENESS_SERVICE_NAME = f"{SERVICE_NAME}.Liveness"
EXPORT_CHUNK_BYTES = 1 << 20
# Tokenizing a 1 MiB prompt takes over a second on a CPU core. It runs on these threads (the
# tokenizer releases the GIL), never on the event loop, so health checks and other streams keep
# flowing while large prompts are tokenized; two threads bound the CPU one client can take.
TOKENIZE_THREADS = 2


class RuntimeServicer:
    def __init__(self, host: EngineHost, observer: RequestObserver | None = None):
        self.host = host
        self.observer = observer or RequestObserver()      # log line, metrics, trace per call
        self.num_active_streams = 0
        self.num_requests_total = 0
        self.num_requests_aborted = 0
        self.num_tokens_generated = 0
        self._tokenizing = ThreadPoolExecutor(TOKENIZE_THREADS, thread_name_prefix="kiln-tokenize")

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._tokenizing, fn, *args)

    # ---- Generate ------------------------------------------------------------------------

    async def Generate(self, request, context):
        record = self.observer.start(context.invocation_metadata())
        self.num_active_streams += 1
        stream = executor = assembler = wanted = None
        status = "OK"
        try:
            try:
                executor = self.host.require_serving()
                request = _parsed(request)
                if request.HasField("text"):
                    wanted = await self._off_loop(engine_request, request, executor.tokenizer,
                                                  self.host.limits)
                else:               # token ids: nothing slow to do, so no thread hop either
                    wanted = engine_request(request, executor.tokenizer, self.host.limits)
                stream = executor.submit(wanted.request)
            except Exception as exc:
                status = type(exc).__name__
                await abort_with(context, exc)
            self.num_requests_total += 1
            assembler = ResponseAssembler(wanted.request.request_id, wanted.streaming,
                                          wanted.detokenize)
            try:
                # The response headers go now, while the prefill runs, not with the first
                # token: its way back to the client is then one message, 0.2 ms shorter on the
                # CI CPU (bench/NOTES.md, 2026-12-04, fourth session).
                await context.send_initial_metadata(())
                async for outputs in stream.batches():
                    record.outputs(outputs)
                    for response in assembler.add_all(outputs):
                        yield response
                for response in assembler.finish():
                    yield response
            except KilnError as exc:
                status = type(exc).__name__
                await abort_with(context, exc)
        finally:
            self.num_active_streams -= 1
            if stream is not None and not stream.finished:
                executor.abort(stream.request_id)
                self.num_requests_aborted += 1
                status = "CANCELLED" if status == "OK" else status
            if assembler is not None:
                self.num_tokens_generated += assembler.num_output_tokens
            record.finish(status, assembler, wanted.request if wanted is not None else None)

    # ---- unary calls ---------------------------------------------------------------------

    async def Abort(self, request, context):
        executor = self.host.require_serving()
        aborted = executor.abort(_parsed(request).request_id)
        if aborted:
            self.num_requests_aborted += 1
        return runtime_pb2.AbortResponse(aborted=aborted)

    async def GetModelInfo(self, request, context):
        _parsed(request)
        self.host.require_serving()
        return self.host.info

    async def GetServerInfo(self, request, context):
        _parsed(request)
        host = self.host
        options = host.settings.executor
        info = runtime_pb2.ServerInfo(
            version=__version__, state=host.state.value,
            num_requests_total=self.num_requests_total,
            num_requests_aborted=self.num_requests_aborted,
            num_tokens_generated=self.num_tokens_generated,
            uptime_s=time.monotonic() - host.started_at,
            load_engine_enabled=host.settings.allow_load_engine,
            device=options.device if options else "cpu",
            quant_algos=capabilities.LOADABLE_QUANT_ALGOS,
            max_world_size=capabilities.MAX_WORLD_SIZE)
        if options is not None:
            info.max_queue_size = options.max_queue_size
            info.scheduler_policy = options.policy.value
        if host.executor is not None:
            stats = host.executor.stats()
            info.kv_cache.CopyFrom(runtime_pb2.KvCacheStats(
                num_free_blocks=stats.num_free_blocks, num_total_blocks=stats.num_total_blocks,
                block_size=host.executor.kv.block_size))
            info.num_live_requests = stats.num_live_requests
            info.num_waiting = stats.num_waiting
            info.num_running = stats.num_running
        return info

    async def LoadEngine(self, request, context):
        request = _parsed(request)
        if not self.host.settings.allow_load_engine:
            from runtime_service.errors import PermissionDenied
            raise PermissionDenied(
                "LoadEngine is switched off on this pod; start it with --allow-load-engine")
        if not request.engine_uri:
            raise InvalidRequest("engine_uri is empty")
        return await self.host.load(request.engine_uri, request.options)

    async def Tokenize(self, request, context):
        request = _parsed(request)
        executor = self.host.require_serving()
        if executor.tokenizer is None:
            raise FailedPrecondition("this engine has no tokenizer")
        if len(request.text) > self.host.limits.max_text_chars:
            raise InvalidRequest(
                f"the text has {len(request.text)} characters; at most "
                f"{self.host.limits.max_text_chars}")
        special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        encoded = await self._off_loop(
            lambda: executor.tokenizer(request.text, add_special_tokens=special))
        ids = encoded["input_ids"]
        return runtime_pb2.TokenizeResponse(token_ids=ids)

    # ---- ExportEngine --------------------------------------------------------------------

    async def ExportEngine(self, request, context):
        try:
            _parsed(request)
            self.host.require_serving()
            folder = self.host.folder
            if self.host.info.kind != "engine":
                raise FailedPrecondition(
                    f"this pod serves a {self.host.info.kind} folder, not a built engine; only "
                    f"engines can be exported")
            manifest = read_manifest(folder)
        except Exception as exc:
            await abort_with(context, exc)
        entries = [(e.path, e.size_bytes, e.sha256) for e in manifest.files]
        manifest_path = folder / MANIFEST
        entries.append((MANIFEST, manifest_path.stat().st_size, ""))
        for path, size, sha in entries:
            with open(folder / path, "rb") as handle:
                offset = 0
                while True:
                    data = handle.read(EXPORT_CHUNK_BYTES)
                    if not data and offset > 0:
                        break
                    yield runtime_pb2.EngineFileChunk(
                        path=path, offset=offset, data=data,
                        size_bytes=size if offset == 0 else 0, sha256=sha if offset == 0 else "")
                    offset += len(data)
                    if not data:
                        break


def _unary(method):
    async def handler(request, context):
        try:
            return await method(request, context)
        except Exception as exc:
            await abort_with(context, exc)
    return handler


def generic_handler(servicer: RuntimeServicer) -> grpc.GenericRpcHandler:
    """The Runtime's method table, with lenient request parsing (see _lenient)."""
    m = runtime_pb2
    unary = {"Abort": m.AbortRequest, "GetModelInfo": m.GetModelInfoRequest,
             "GetServerInfo": m.GetServerInfoRequest, "LoadEngine": m.LoadEngineRequest,
             "Tokenize": m.TokenizeRequest}
    streams = {"Generate": m.GenerateRequest, "ExportEngine": m.ExportEngineRequest}
    handlers = {}
    for name, request_cls in unary.items():
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            _unary(getattr(servicer, name)), request_deserializer=_lenient(request_cls),
            response_serializer=lambda message: message.SerializeToString())
    for name, request_cls in streams.items():
        handlers[name] = grpc.unary_stream_rpc_method_handler(
            getattr(servicer, name), request_deserializer=_lenient(request_cls),
            response_serializer=lambda message: message.SerializeToString())
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
