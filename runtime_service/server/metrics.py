"""Prometheus metrics of one runtime pod, served over HTTP beside the gRPC port (--metrics-listen).

Every name starts with `kiln_` and carries the pod's engine key and served model name as labels,
so one Prometheus can tell the engines of many pods apart. Nothing here runs in the step loop:
request histograms and counters are observed once per request when its Generate call ends
(request_log.RequestRecord), and the engine's gauges (live, running and waiting requests, KV
blocks, preemptions, step rate) are read from `Executor.stats()` only when Prometheus scrapes.
Each server owns its own CollectorRegistry, so several pods in one test process never mix.
prometheus-client is imported only when metrics are switched on, so a pod without them (the
default) runs where it is not installed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

from runtime_service.errors import InvalidRequest

LABELS = ("engine_key", "model")

# Seconds. TTFT spans a cached short prompt to a long prefill behind a full queue.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class EngineSnapshot:
    """What the stats collector reads at scrape time: the labels and the executor's stats."""

    engine_key: str
    model: str
    stats: object               # engine.executor_options.ExecutorStats


class EngineStatsCollector:
    """Gauges and counters read from the executor at scrape time: no cost between scrapes.

    The step rate is the steps made since the previous scrape over the time between them (the
    first scrape reports 0); `kiln_engine_steps_total` is there too for PromQL's rate()."""

    def __init__(self, snapshot: Callable[[], EngineSnapshot | None]):
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._last: tuple[float, int] | None = None

    def describe(self):
        return []               # read lazily: an empty pod has no engine to describe yet

    def _step_rate(self, num_steps: int) -> float:
        now = time.monotonic()
        with self._lock:
            last, self._last = self._last, (now, num_steps)
        if last is None or now <= last[0] or num_steps < last[1]:
            return 0.0
        return (num_steps - last[1]) / (now - last[0])

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        snap = self._snapshot()
        if snap is None:
            return
        s, labels = snap.stats, [snap.engine_key, snap.model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"kiln_{name}", doc, labels=LABELS)
            family.add_metric(labels, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"kiln_{name}", doc, labels=LABELS)
            family.add_metric(labels, value)
            return family

        used = s.num_total_blocks - s.num_free_blocks
        yield gauge("requests_live", "Requests submitted and not yet finished.",
                    s.num_live_requests)
        yield gauge("requests_running", "Requests in the running batch.", s.num_running)
        yield gauge("requests_waiting", "Requests waiting to be scheduled.", s.num_waiting)
        yield gauge("kv_blocks_used", "KV-cache blocks in use.", used)
        yield gauge("kv_blocks_total", "KV-cache blocks in the pool.", s.num_total_blocks)
        yield gauge("kv_cache_usage_ratio", "Share of KV-cache blocks in use (0..1).",
                    used / s.num_total_blocks if s.num_total_blocks else 0.0)
        yield gauge("engine_steps_per_second", "Engine steps per second since the last scrape.",
                    self._step_rate(s.num_steps))
        yield counter("engine_steps", "Engine steps made.", s.num_steps)
        yield counter("preemptions", "Sequences preempted (recomputed later).",
                      s.num_preemptions)


class RuntimeMetrics:
    """The runtime's request metrics in a registry of their own, plus the engine collector."""

    def __init__(self, snapshot: Callable[[], EngineSnapshot | None] = lambda: None):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        self.registry = CollectorRegistry()
        r = self.registry

        def histogram(name: str, doc: str, buckets):
            return Histogram(f"kiln_{name}", doc, LABELS, buckets=buckets, registry=r)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()):
            return Counter(f"kiln_{name}", doc, LABELS + extra, registry=r)

        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "From the Generate call to its first token.",
            TTFT_BUCKETS)
        self.time_per_output_token = histogram(
            "time_per_output_token_seconds",
            "A request's mean time between output tokens after the first.", TPOT_BUCKETS)
        self.e2e_latency = histogram("e2e_request_latency_seconds",
                                     "From the Generate call to its end.", LATENCY_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds",
                                    "From submission to the request's first scheduled step.",
                                    QUEUE_BUCKETS)
        self.prompt_length = histogram("request_prompt_tokens", "Prompt tokens per request.",
                                       TOKEN_BUCKETS)
        self.output_length = histogram("request_generation_tokens",
                                       "Generated tokens per request.", TOKEN_BUCKETS)
        self.requests = counter("requests", "Generate calls by gRPC status code and finish "
                                "reason.", ("code", "finish_reason"))
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of Generate calls.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.prefix_cached_tokens = counter("prefix_cached_tokens",
                                            "Prompt tokens served from the prefix cache.")
        r.register(EngineStatsCollector(snapshot))
        self._children: dict[tuple[str, str], SimpleNamespace] = {}

    def of(self, engine_key: str, model: str) -> SimpleNamespace:
        """The series of one engine and model, looked up once (a label lookup costs more than
        the observation itself): the same attribute names, without `.labels(...)`."""
        key = (engine_key, model)
        children = self._children.get(key)
        if children is None:
            names = ("time_to_first_token", "time_per_output_token", "e2e_latency", "queue_time",
                     "prompt_length", "output_length", "prompt_tokens", "generation_tokens",
                     "prefix_cached_tokens")
            children = SimpleNamespace(**{n: getattr(self, n).labels(*key) for n in names})
            self._children[key] = children
        return children


@dataclass(frozen=True)
class MetricsEndpoint:
    """A `HOST:PORT` to serve /metrics on; port 0 picks a free one."""

    host: str
    port: int

    @classmethod
    def parse(cls, listen: str) -> "MetricsEndpoint":
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise InvalidRequest(f"--metrics-listen must be HOST:PORT, got {listen!r}")
        return cls(host.strip("[]"), int(port))


class MetricsServer:
    """prometheus-client's HTTP server on its own daemon thread (off the event loop)."""

    def __init__(self, registry, endpoint: MetricsEndpoint):
        from prometheus_client import start_http_server
        self._server, self._thread = start_http_server(endpoint.port, endpoint.host,
                                                       registry=registry)
        self.port = self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
