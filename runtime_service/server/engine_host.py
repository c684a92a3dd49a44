"""The pod's one engine and its life: EMPTY -> LOADING -> SERVING -> DRAINING.

Loading (pull, verify, load weights, warm up: server/engine_start.py) runs on a worker thread so
the gRPC loop keeps answering health checks and GetServerInfo meanwhile. Health says SERVING only
after a warm-up request has gone through the whole step loop, so the first real request never pays
for it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from kiln.v1 import engine_pb2, runtime_pb2

from runtime_service.server import capabilities
from runtime_service.server.convert import ServingLimits, model_info
from runtime_service.format.engine_format import read_manifest
from runtime_service.errors import FailedPrecondition, InvalidRequest, Unavailable
from runtime_service.server.core_client import start_core_process
from runtime_service.server.engine_start import start_engine
from runtime_service.server.heap import set_start_up_heap_aside
from runtime_service.server.startup_report import StartupReport, process_age_s

log = logging.getLogger("kiln.runtime")

ENGINE_CORES = ("thread", "process")


class State(enum.Enum):
    EMPTY = runtime_pb2.SERVER_STATE_EMPTY
    LOADING = runtime_pb2.SERVER_STATE_LOADING
    SERVING = runtime_pb2.SERVER_STATE_SERVING
    DRAINING = runtime_pb2.SERVER_STATE_DRAINING


HEAP_ASIDE_DELAY_S = 1.0


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything a runtime pod is started with (the `serve` flags), validated once."""

    cache_dir: Path = Path.home() / ".cache" / "kiln" / "engines"
    executor: object = None                 # ExecutorOptions; None = defaults
    limits: ServingLimits = field(default_factory=ServingLimits)
    allow_load_engine: bool = False
    grace_s: float = 30.0
    max_message_bytes: int = 4 << 20
    step_stall_timeout_s: float = 60.0      # liveness: work but no step this long = stalled
    share_startup_cache: bool = False       # tuning results also beside the engine in its store
    # "process" (the default): the step loop runs in its own engine-core process
    # (server/core_process.py), so it never waits for the GIL the gRPC event loop holds;
    # "thread": in this process. On the H200, 256 streams of 128/128 tokens keep 0.94 of the
    # in-process throughput with the process core, 0.82 with the thread (bench/NOTES.md run 13).
    engine_core: str = "process"
    # This process exists to serve (`python -m runtime_service serve`): once it serves, its
    # start-up heap leaves garbage collection (server/heap.py). Off for a host embedded in
    # another process (tests), whose heap is not the pod's to freeze.
    serving_process: bool = False

    def __post_init__(self):
        if not 0 <= self.grace_s <= 3600:
            raise InvalidRequest(f"grace_s must be in [0, 3600], got {self.grace_s}")
        if not 0 < self.step_stall_timeout_s <= 86400:
            raise InvalidRequest(
                f"step_stall_timeout_s must be in (0, 86400], got {self.step_stall_timeout_s}")
        if not 1024 <= self.max_message_bytes <= 256 << 20:
            raise InvalidRequest(
                f"max_message_bytes must be in [1 KiB, 256 MiB], got {self.max_message_bytes}")
        if self.engine_core not in ENGINE_CORES:
            raise InvalidRequest(
                f"engine_core must be one of {ENGINE_CORES}, got {self.engine_core!r}")


def apply_options(settings: RuntimeSettings, options: runtime_pb2.RuntimeOptions) -> RuntimeSettings:
    """The pod's settings with a LoadEngine call's non-zero options laid over them."""
    # executor_options, not executor: the pod process must not import torch before it
    # spawns the engine core, which imports it again (3 s each on the H200 host).
    from runtime_service.engine.executor_options import ExecutorOptions
    if options.sink_token_length and not options.max_attention_window:
        raise InvalidRequest("sink_token_length needs max_attention_window")
    if options.sink_token_length or options.max_attention_window:
        if not capabilities.STREAMING_LLM:
            raise FailedPrecondition(
                "StreamingLLM (sink tokens with a sliding attention window) is not available in "
                "this runtime")
    if options.enable_block_reuse and not capabilities.BLOCK_REUSE:
        raise FailedPrecondition("KV block reuse is not available in this runtime")
    executor = settings.executor or ExecutorOptions()
    changes = {}
    if options.kv_max_tokens:
        changes["kv_max_tokens"] = options.kv_max_tokens
    if options.kv_free_gpu_memory_fraction:
        changes["kv_free_gpu_memory_fraction"] = options.kv_free_gpu_memory_fraction
    if options.scheduler_policy:
        try:
            changes["policy"] = type(executor.policy)(options.scheduler_policy)
        except ValueError as exc:
            raise InvalidRequest(f"unknown scheduler_policy {options.scheduler_policy!r}") from exc
    if options.max_queue_size:
        changes["max_queue_size"] = options.max_queue_size
    if options.max_attention_window:
        changes["max_attention_window"] = options.max_attention_window
        changes["sink_token_length"] = options.sink_token_length
        changes["streaming_llm"] = options.streaming_llm
    if options.enable_block_reuse:
        changes["enable_block_reuse"] = True
    if options.HasField("enable_chunked_context"):
        changes["enable_chunked_prefill"] = options.enable_chunked_context
    limits = settings.limits
    if options.max_new_tokens:
        limits = ServingLimits(max_new_tokens=options.max_new_tokens,
                               default_max_new_tokens=limits.default_max_new_tokens,
                               max_text_chars=limits.max_text_chars)
    return replace(settings, executor=replace(executor, **changes), limits=limits)


class EngineHost:
    """`on_failure(exc)` runs on the event loop once the engine fails beyond recovery (the host
    has then turned DRAINING and refuses new requests with UNAVAILABLE)."""

    def __init__(self, settings: RuntimeSettings, on_state=None, on_failure=None):
        self.settings = settings
        self.state = State.EMPTY
        self.executor = None
        self.folder: Path | None = None
        self.info: runtime_pb2.ModelInfo | None = None
        self.failure: BaseException | None = None
        self._on_state = on_state or (lambda state: None)
        self._on_failure = on_failure or (lambda exc: None)
        self.started_at = time.monotonic()
        self.startup: StartupReport | None = None     # where the engine's start-up time went
        self._process_age_s = process_age_s()

    def _set_state(self, state: State) -> None:
        self.state = state
        self._on_state(state)

    @property
    def limits(self) -> ServingLimits:
        return self.settings.limits

    def require_serving(self):
        if self.failure is not None:
            raise Unavailable(f"the engine failed ({self.failure}); retry on another replica")
        if self.state is State.SERVING:
            return self.executor
        if self.state is State.DRAINING:
            raise Unavailable("the server is shutting down; retry on another replica")
        if self.state is State.LOADING:
            raise Unavailable("the engine is still loading; retry shortly")
        raise FailedPrecondition("no engine is loaded; call LoadEngine first")

    async def load(self, uri: str, options: runtime_pb2.RuntimeOptions | None = None):
        if self.state is not State.EMPTY:
            raise FailedPrecondition(
                f"this pod already has an engine ({self.state.name.lower()}); start another pod")
        settings = apply_options(self.settings, options) if options else self.settings
        self._set_state(State.LOADING)
        try:
            start = start_engine if settings.engine_core == "thread" else start_core_process
            started = await asyncio.to_thread(start, uri, settings, self._process_age_s)
        except BaseException:
            self._set_state(State.EMPTY)
            raise
        self.executor, self.folder, kind = started.executor, started.folder, started.kind
        self.startup = started.report
        self.settings = settings
        loop = asyncio.get_running_loop()
        self.executor.on_failure = lambda exc: loop.call_soon_threadsafe(self._engine_failed, exc)
        key = read_manifest(self.folder).engine_key if kind == "engine" else ""
        self.info = model_info(self.executor, engine_pb2.EngineRef(engine_key=key, uri=uri), kind,
                               settings.limits)
        self._set_state(State.SERVING)
        if settings.serving_process:
            # A moment after SERVING: the collection (0.1-0.2 s with transformers imported for
            # the tokenizer, on the CI CPU) is then not part of the start.
            asyncio.get_running_loop().call_later(HEAP_ASIDE_DELAY_S, set_start_up_heap_aside,
                                                  "pod")
        return self.info

    def _engine_failed(self, exc: BaseException) -> None:
        log.error("engine failed beyond recovery: %s", exc)
        self.failure = exc
        self._set_state(State.DRAINING)
        self._on_failure(exc)

    async def drain(self) -> None:
        self._set_state(State.DRAINING)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()
