"""A runtime pod's observability settings and the parts they switch on: the /metrics endpoint,
OTLP tracing and the per-request record. Kept beside serve.py so the serving settings
(engine_host.RuntimeSettings) stay about serving."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from runtime_service.errors import InvalidRequest
from runtime_service.server.metrics import (EngineSnapshot, MetricsEndpoint, MetricsServer,
                                            RuntimeMetrics)
from runtime_service.server.request_log import RequestObserver, ServedModel
from runtime_service.server.tracing import SERVICE_RUNTIME, Tracing

log = logging.getLogger("kiln.runtime")


@dataclass(frozen=True)
class ObservabilitySettings:
    """`metrics_listen` empty: no metrics endpoint (the default, and the SDK's embedded pod).
    `otlp_endpoint` empty: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT if set, else no tracing."""

    metrics_listen: str = ""
    metrics_port_file: Path | None = None
    served_model_name: str = ""
    otlp_endpoint: str = ""

    def __post_init__(self):
        if self.metrics_listen:
            MetricsEndpoint.parse(self.metrics_listen)
        if self.metrics_port_file is not None and not self.metrics_listen:
            raise InvalidRequest("--metrics-port-file needs --metrics-listen")


def add_observability_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-listen", default="",
                        help="HOST:PORT for Prometheus /metrics over HTTP (port 0: any free "
                        "port); empty (the default): no metrics endpoint")
    parser.add_argument("--metrics-port-file", help="write the bound metrics port here")
    parser.add_argument("--served-model-name", default="",
                        help="the `model` label of every metric; default: the engine URI's "
                        "last path segment")
    parser.add_argument("--otlp-endpoint", default="",
                        help="OTLP/gRPC collector for traces (e.g. http://otel-collector:4317); "
                        "default: OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off")
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="text: key=value fields; json: one JSON object per line")


def observability_from_args(args) -> ObservabilitySettings:
    return ObservabilitySettings(
        metrics_listen=args.metrics_listen,
        metrics_port_file=Path(args.metrics_port_file) if args.metrics_port_file else None,
        served_model_name=args.served_model_name, otlp_endpoint=args.otlp_endpoint)


class PodObservability:
    """The metrics registry and server, the tracer and the request observer of one pod.

    `host` is the pod's EngineHost: labels and engine stats are read from it when needed, so
    an empty pod that loads an engine later reports it from then on."""

    def __init__(self, settings: ObservabilitySettings, host, tracing: Tracing | None = None):
        self.settings = settings
        self.host = host
        self.metrics = RuntimeMetrics(self._snapshot) if settings.metrics_listen else None
        self.tracing = tracing or Tracing.from_settings(settings.otlp_endpoint, SERVICE_RUNTIME)
        self.observer = RequestObserver(self.metrics, self.tracing, self.served_model)
        self.server: MetricsServer | None = None

    def served_model(self) -> ServedModel:
        info = self.host.info
        if info is None:
            return ServedModel(model=self.settings.served_model_name)
        uri = info.engine.uri.rstrip("/")
        name = self.settings.served_model_name or uri.rsplit("/", 1)[-1]
        return ServedModel(engine_key=info.engine.engine_key, model=name)

    def _snapshot(self) -> EngineSnapshot | None:
        executor = self.host.executor
        if executor is None or self.host.info is None:
            return None
        served = self.served_model()
        return EngineSnapshot(served.engine_key, served.model, executor.stats())

    def start(self) -> int:
        """Starts the /metrics endpoint if configured; returns its port (0 when off)."""
        if self.metrics is None:
            return 0
        self.server = MetricsServer(self.metrics.registry,
                                    MetricsEndpoint.parse(self.settings.metrics_listen))
        if self.settings.metrics_port_file is not None:
            self.settings.metrics_port_file.write_text(str(self.server.port))
        log.info("metrics on http://%s:%d/metrics",
                 MetricsEndpoint.parse(self.settings.metrics_listen).host, self.server.port)
        return self.server.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.tracing.shutdown()
