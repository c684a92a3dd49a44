"""`python -m runtime_service serve`: one runtime pod's process, from flags to a draining exit.

The server listens first (health NOT_SERVING) and loads the engine behind it, so probes see a
live, unready pod during a long pull. The liveness health service (LIVENESS_SERVICE_NAME) is
SERVING from the start, through loading and draining, and NOT_SERVING only while the step loop
has work but has made no step for `--step-stall-timeout-s` (liveness.StepStallWatchdog).
An engine split over several ranks starts them (runtime_service/distributed/ranks.py); on a node started by a
launcher with RANK >= 1 `serve` hosts that node's ranks instead of a server.
SIGTERM or SIGINT: health goes NOT_SERVING, new Generate calls get UNAVAILABLE, running streams
get `grace_s` to finish, then the process exits. A load that fails at start prints one line
`kiln-runtime: error: CODE: message` and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime_service.server.auth import TransportSecurity
# executor_options, not executor: the pod process must not import torch before it spawns the
# engine core, which imports it again (3 s each on the H200 host).
from runtime_service.engine.executor_options import (
    ATTENTION_BACKENDS, DEFAULT_PREFILL_GRAPH_TOKENS, ExecutorOptions)
from runtime_service.server.convert import ServingLimits
from runtime_service.server.engine_host import ENGINE_CORES, EngineHost, RuntimeSettings, State
from runtime_service.errors import KilnError
from runtime_service.server.liveness import StepStallWatchdog
from runtime_service.store.atomic_folder import remove_abandoned_partials
from runtime_service.server.observability import (ObservabilitySettings, PodObservability,
                                                  add_observability_arguments,
                                                  observability_from_args)
from runtime_service.server.kernel_cache import finish_sharing, pod_kernel_folder
from runtime_service.server.log_format import configure_logging
from runtime_service.server.servicer import (LIVENESS_SERVICE_NAME, SERVICE_NAME, RuntimeServicer,
                                    generic_handler)

log = logging.getLogger("kiln.runtime")

DEFAULT_LISTEN = "127.0.0.1:50051"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", default="", help="s3://bucket/prefix, file:// or a path; "
                        "empty: wait for LoadEngine (needs --allow-load-engine)")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT or unix:PATH")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "kiln" / "engines"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--allow-load-engine", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--token-file")
    parser.add_argument("--kv-max-tokens", type=int)
    parser.add_argument("--kv-free-gpu-memory-fraction", type=float, default=0.9)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--scheduler-policy", default="GUARANTEED_NO_EVICT",
                        choices=("GUARANTEED_NO_EVICT", "MAX_UTILIZATION"))
    parser.add_argument("--max-queue-size", type=int, default=1024)
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--enable-block-reuse", action="store_true",
                        help="share computed prefix blocks between requests")
    parser.add_argument("--max-attention-window", type=int,
                        help="keep only this many recent tokens in the KV cache")
    parser.add_argument("--sink-token-length", type=int, default=0,
                        help="first tokens always kept when a window is set")
    parser.add_argument("--streaming-llm", action="store_true",
                        help="with a window: rotary positions within the cache (StreamingLLM)")
    parser.add_argument("--disable-chunked-context", action="store_true",
                        help="prefill each prompt in one step")
    parser.add_argument("--no-overlap-scheduling", action="store_true",
                        help="on CUDA, run steps one at a time instead of scheduling step n+1 "
                        "while step n runs")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="on CUDA, skip the start-up step of max_num_tokens prompt tokens "
                        "that reserves the largest step's memory before serving")
    parser.add_argument("--cuda-graph-max-prefill-tokens", type=int,
                        help="on CUDA, replay a captured graph for the prefill of one prompt of "
                        "up to this many tokens (0: never; default "
                        f"{DEFAULT_PREFILL_GRAPH_TOKENS}, capped at the engine's max_num_tokens)")
    parser.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS,
                        help="auto: the Triton kernels on CUDA (on Hopper with torch's fused "
                        "attention for one sequence's prefill of 512 tokens or more), the torch "
                        "reference elsewhere; triton-flash: the Triton kernels with torch's "
                        "fused attention for every prefill of one sequence")
    parser.add_argument("--max-new-tokens", type=int, default=2048,
                        help="the most new tokens one request may ask for")
    parser.add_argument("--default-max-new-tokens", type=int, default=32)
    parser.add_argument("--max-message-bytes", type=int, default=4 << 20)
    parser.add_argument("--grace-s", type=float, default=30.0)
    parser.add_argument("--step-stall-timeout-s", type=float, default=60.0,
                        help=f"health service {LIVENESS_SERVICE_NAME} goes NOT_SERVING when the "
                        "step loop has work but no step for this long")
    parser.add_argument("--share-startup-cache", action="store_true",
                        help="also keep start-up tuning results and compiled GPU kernels beside "
                        "the engine in its store, so pods on the same GPU model skip both")
    parser.add_argument("--engine-core", default="process", choices=ENGINE_CORES,
                        help="run the engine's step loop in its own process (the default: no "
                        "GIL shared with the gRPC event loop) or on a thread of this process")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--log-level", default="INFO")
    add_observability_arguments(parser)


def settings_from_args(args) -> RuntimeSettings:
    options = ExecutorOptions(
        device=args.device, dtype=args.dtype, block_size=args.block_size,
        kv_max_tokens=args.kv_max_tokens,
        kv_free_gpu_memory_fraction=args.kv_free_gpu_memory_fraction,
        max_batch_size=args.max_batch_size, policy=args.scheduler_policy,
        max_queue_size=args.max_queue_size, enable_block_reuse=args.enable_block_reuse,
        max_attention_window=args.max_attention_window,
        sink_token_length=args.sink_token_length, streaming_llm=args.streaming_llm,
        enable_chunked_prefill=not args.disable_chunked_context,
        overlap_scheduling=False if args.no_overlap_scheduling else None,
        warm_up_largest_step=False if args.no_warm_up else None,
        cuda_graph_max_prefill_tokens=args.cuda_graph_max_prefill_tokens,
        attention_backend=args.attention_backend)
    return RuntimeSettings(
        cache_dir=Path(args.cache_dir), executor=options,
        limits=ServingLimits(max_new_tokens=args.max_new_tokens,
                             default_max_new_tokens=args.default_max_new_tokens),
        allow_load_engine=args.allow_load_engine, grace_s=args.grace_s,
        max_message_bytes=args.max_message_bytes, step_stall_timeout_s=args.step_stall_timeout_s,
        share_startup_cache=args.share_startup_cache, engine_core=args.engine_core,
        serving_process=True)


class RuntimeServer:
    """The grpc.aio server with the Runtime, health and reflection services."""

    def __init__(self, settings: RuntimeSettings, security: TransportSecurity = TransportSecurity(),
                 observability: ObservabilitySettings = ObservabilitySettings(), tracing=None):
        self.settings = settings
        self.security = security
        self.health = health.aio.HealthServicer()
        self.host = EngineHost(settings, on_state=self._on_state,
                               on_failure=self._on_engine_failure)
        self.observability = PodObservability(observability, self.host, tracing)
        self.servicer = RuntimeServicer(self.host, self.observability.observer)
        size = settings.max_message_bytes
        self.server = grpc.aio.server(
            interceptors=security.interceptors(),
            options=[("grpc.max_receive_message_length", size),
                     ("grpc.max_send_message_length", max(size, 8 << 20)),
                     ("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((generic_handler(self.servicer),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.watchdog = StepStallWatchdog(self._executor_stats, settings.step_stall_timeout_s)
        self._watching: asyncio.Task | None = None
        self._stopped = asyncio.Event()
        self.port = 0
        self.exit_code = 0
        self._draining = False

    def _executor_stats(self):
        executor = self.host.executor
        return executor.stats() if executor is not None else None

    def _on_state(self, state: State) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if state is State.SERVING
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            asyncio.get_running_loop().create_task(self.health.set(name, status))

    def _on_engine_failure(self, exc: BaseException) -> None:
        """Liveness goes NOT_SERVING so the orchestrator restarts the pod. An engine on several
        ranks, or whose engine-core process died, also exits (code 1): neither can be mended in
        place."""
        loop = asyncio.get_running_loop()
        if self._watching is not None:
            self._watching.cancel()
            self._watching = None
        loop.create_task(self.health.set(LIVENESS_SERVICE_NAME,
                                         health_pb2.HealthCheckResponse.NOT_SERVING))
        log.error("liveness service=%s status=NOT_SERVING reason=engine-failed",
                  LIVENESS_SERVICE_NAME)
        executor = self.host.executor
        if (getattr(executor, "ranks", None) is not None
                or getattr(executor, "process_lost", False)):
            self.exit_code = 1
            loop.create_task(self.drain_and_stop())

    async def _watch_step_loop(self) -> None:
        """Polls the watchdog and flips the liveness service, with one log line per flip."""
        stalled = False
        while True:
            try:
                verdict = self.watchdog.check()
            except Exception:  # noqa: BLE001 - a failed read must not end the watch
                log.exception("liveness check failed")
            else:
                if verdict.stalled != stalled:
                    stalled = verdict.stalled
                    await self.health.set(LIVENESS_SERVICE_NAME,
                                          health_pb2.HealthCheckResponse.NOT_SERVING if stalled
                                          else health_pb2.HealthCheckResponse.SERVING)
                    log.log(logging.ERROR if stalled else logging.INFO,
                            "liveness service=%s status=%s num_steps=%d stalled_for_s=%.1f "
                            "timeout_s=%g", LIVENESS_SERVICE_NAME,
                            "NOT_SERVING" if stalled else "SERVING", verdict.num_steps,
                            verdict.stalled_for_s, self.watchdog.timeout_s)
            await asyncio.sleep(self.watchdog.poll_interval_s)

    async def start(self, listen: str) -> int:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._watching = asyncio.get_running_loop().create_task(self._watch_step_loop())
        self.port = self.security.add_port(self.server, listen)
        if not self.port and not listen.startswith("unix:"):
            raise OSError(f"cannot listen on {listen}")
        await self.server.start()
        log.info("runtime listening on %s (port %d)", listen, self.port)
        self.observability.start()
        return self.port

    async def drain_and_stop(self) -> None:
        """NOT_SERVING, refuse new calls, let running streams finish within the grace period."""
        if self._draining:
            return
        self._draining = True
        await self.host.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.grace_s
        while self.servicer.num_active_streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # Streams still running have had their grace period: they end now (the client resumes
        # elsewhere). With none left, a second lets calls that just ended send their trailers.
        await self.stop(grace_s=0.0 if self.servicer.num_active_streams else 1.0)
        await asyncio.to_thread(self.host.shutdown)
        await asyncio.to_thread(finish_sharing)     # the engine's packing, if it ran here
        self._stopped.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops the liveness watch and the gRPC server (no drain: see drain_and_stop)."""
        if self._watching is not None:
            self._watching.cancel()
            self._watching = None
        await self.server.stop(grace=grace_s)
        self.observability.stop()

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(args) -> int:
    settings = settings_from_args(args)
    security = TransportSecurity.from_files(args.tls_cert, args.tls_key, args.token_file)
    runtime = RuntimeServer(settings, security, observability_from_args(args))
    # what a pull killed mid-way left behind (a live pull of another pod holds its lock)
    await asyncio.to_thread(remove_abandoned_partials, settings.cache_dir)
    port = await runtime.start(args.listen)
    if args.port_file:
        Path(args.port_file).write_text(str(port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(runtime.drain_and_stop()))
    if args.engine:
        try:
            await runtime.host.load(args.engine)
        except KilnError as exc:
            print(f"kiln-runtime: error: {exc.status}: {exc}", file=sys.stderr, flush=True)
            await runtime.stop()
            return 2
    elif not settings.allow_load_engine:
        log.warning("started without --engine and without --allow-load-engine: nothing to serve")
    await runtime.wait()
    return runtime.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime_service serve",
                                     description="Serve one Kiln engine over gRPC.")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    # Before anything compiles, here or in the processes this pod starts (they inherit it).
    pod_kernel_folder(Path(args.cache_dir))
    from runtime_service.distributed.rank_layout import launch_layout
    layout = launch_layout()
    if layout.launched and layout.node_rank > 0:
        # A launched node other than the leader's (LWS worker pod, srun task): it serves no
        # gRPC; it hosts its ranks of whatever engine rank 0 loads, until rank 0 stops.
        from runtime_service.distributed.rank_worker import run_launched_node
        log.info("node %d of %d: hosting ranks %d..%d for the leader at %s:%d", layout.node_rank,
                 layout.num_nodes, layout.rank, layout.rank + layout.ranks_per_node - 1,
                 layout.master_addr, layout.master_port)
        return run_launched_node(layout, args.device, Path(args.cache_dir))
    try:
        return asyncio.run(serve(args))
    except KilnError as exc:
        print(f"kiln-runtime: error: {exc.status}: {exc}", file=sys.stderr, flush=True)
        return 2
