"""Optional OpenTelemetry traces of Generate and Build calls, exported over OTLP.

Off unless an OTLP endpoint is configured (`--otlp-endpoint`, or the standard
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): then each call gets a server
span whose parent is the W3C `traceparent` the client sent in its gRPC metadata, and child spans
for its phases. The phases are laid down when the call ends, from timestamps the call kept
(request_log.RequestRecord), so tracing adds nothing to the step loop or to each streamed chunk.
The SDK is imported only when tracing is on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

SERVICE_RUNTIME = "kiln-runtime"
SERVICE_BUILDER = "kiln-builder"


def otlp_endpoint_from_env() -> str:
    return (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "")


class Tracing:
    """A tracer, or nothing: every method is a no-op when `tracer` is None."""

    def __init__(self, tracer=None, provider=None):
        self.tracer = tracer
        self._provider = provider

    @classmethod
    def off(cls) -> "Tracing":
        return cls()

    @classmethod
    def to_otlp(cls, endpoint: str, service_name: str) -> "Tracing":
        """Batches spans to an OTLP/gRPC collector at `endpoint` (e.g. http://otel:4317)."""
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        return cls.with_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)),
                                  service_name)

    @classmethod
    def with_processor(cls, processor, service_name: str) -> "Tracing":
        """A tracer of its own provider (never the global one), ending in `processor`."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(processor)
        return cls(provider.get_tracer("kiln"), provider)

    @classmethod
    def from_settings(cls, endpoint: str, service_name: str) -> "Tracing":
        endpoint = endpoint or otlp_endpoint_from_env()
        return cls.to_otlp(endpoint, service_name) if endpoint else cls.off()

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def start_call(self, name: str, metadata: Iterable[tuple[str, str]] | None,
                   start_time_s: float, attributes: dict | None = None):
        """A SERVER span for one call, child of the caller's trace context; None when off.
        `start_time_s` is time.time() seconds."""
        if self.tracer is None:
            return None
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind
        carrier = {k.lower(): v for k, v in (metadata or ()) if isinstance(v, str)}
        return self.tracer.start_span(name, context=extract(carrier), kind=SpanKind.SERVER,
                                      start_time=_ns(start_time_s), attributes=attributes)

    def phase(self, parent, name: str, start_s: float, end_s: float,
              attributes: dict | None = None) -> None:
        """A finished child span of `parent` from `start_s` to `end_s` (time.time() seconds)."""
        if self.tracer is None or parent is None:
            return
        from opentelemetry.trace import set_span_in_context
        span = self.tracer.start_span(name, context=set_span_in_context(parent),
                                      start_time=_ns(start_s), attributes=attributes)
        span.end(end_time=_ns(max(start_s, end_s)))

    @staticmethod
    def end_call(span, end_s: float, code: str, attributes: dict | None = None) -> None:
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode
        span.set_attribute("rpc.grpc.status_code", code)
        for key, value in (attributes or {}).items():
            span.set_attribute(key, value)
        if code not in ("OK", "CANCELLED"):
            span.set_status(Status(StatusCode.ERROR, code))
        span.end(end_time=_ns(end_s))

    def shutdown(self) -> None:
        provider, self._provider = self._provider, None
        if provider is not None:
            provider.shutdown()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
