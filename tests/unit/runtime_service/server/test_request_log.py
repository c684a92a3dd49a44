"""RequestObserver without a server: the metrics, spans (OpenTelemetry's in-memory exporter) and
log line one finished Generate call leaves, from timestamps and counts the test sets itself."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime_service.engine.request import FinishReason, Request
from runtime_service.errors import InvalidRequest
from runtime_service.server.metrics import MetricsEndpoint, RuntimeMetrics
from runtime_service.server.log_format import JsonFormatter, KeyValueFormatter, configure_logging
from runtime_service.server.request_log import RequestObserver, ServedModel, grpc_code
from runtime_service.server.tracing import Tracing

SERVED = ServedModel(engine_key="k" * 64, model="smol")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _assembler(prompt=5, output=4, cached=2, reason=FinishReason.LENGTH):
    return SimpleNamespace(request_id="r1", num_prompt_tokens=prompt, num_output_tokens=output,
                           cached_tokens=cached, finish_reason=reason)


def _observer():
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exporter), "kiln-runtime-test")
    observer = RequestObserver(RuntimeMetrics(), tracing, lambda: SERVED)
    return observer, exporter


def _sample(metrics: RuntimeMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, {"engine_key": SERVED.engine_key,
                                                    "model": SERVED.model, **labels}) or 0.0


def _finished_call(observer, status="OK", assembler=None, metadata=(("traceparent", TRACEPARENT),)):
    record = observer.start(metadata)
    request = Request("r1", [1, 2, 3, 4, 5], arrival_time=record.started_s)
    request.first_scheduled_time = record.started_s + 0.010
    request.first_output_time = record.started_s + 0.026
    record.first_token_s = record.started_s + 0.030
    record.last_output_s = record.started_s + 0.090
    record.finish(status, assembler if assembler is not None else _assembler(), request)
    return record


def test_a_finished_call_observes_each_histogram_once_with_its_values():
    observer, _ = _observer()
    _finished_call(observer)
    m = observer.metrics
    assert _sample(m, "kiln_requests_total", code="OK", finish_reason="length") == 1
    assert _sample(m, "kiln_prompt_tokens_total") == 5
    assert _sample(m, "kiln_generation_tokens_total") == 4
    assert _sample(m, "kiln_prefix_cached_tokens_total") == 2
    for name in ("time_to_first_token_seconds", "time_per_output_token_seconds",
                 "request_queue_time_seconds", "e2e_request_latency_seconds",
                 "request_prompt_tokens", "request_generation_tokens"):
        assert _sample(m, f"kiln_{name}_count") == 1, name
    assert _sample(m, "kiln_time_to_first_token_seconds_sum") == pytest.approx(0.030, abs=1e-6)
    # (last - first) / (tokens after the first) = 0.060 / 3
    assert _sample(m, "kiln_time_per_output_token_seconds_sum") == pytest.approx(0.020, abs=1e-6)
    assert _sample(m, "kiln_request_queue_time_seconds_sum") == pytest.approx(0.010, abs=1e-6)


def test_a_call_refused_before_the_engine_counts_its_status_only():
    observer, _ = _observer()
    record = observer.start(None)
    record.finish("InvalidRequest", None, None)
    m = observer.metrics
    assert _sample(m, "kiln_requests_total", code="INVALID_ARGUMENT", finish_reason="") == 1
    assert _sample(m, "kiln_e2e_request_latency_seconds_count") == 0
    assert _sample(m, "kiln_prompt_tokens_total") == 0


def test_spans_nest_under_the_callers_traceparent_in_phase_order():
    observer, exporter = _observer()
    _finished_call(observer)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"kiln.v1.Runtime/Generate", "queue", "prefill", "decode", "stream"}
    root = spans.pop("kiln.v1.Runtime/Generate")
    assert format(root.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert format(root.parent.span_id, "016x") == TRACEPARENT.split("-")[2]
    assert all(s.parent.span_id == root.context.span_id for s in spans.values())
    q, p, d = spans["queue"], spans["prefill"], spans["decode"]
    assert q.end_time == p.start_time and p.end_time == d.start_time
    assert d.end_time - d.start_time == pytest.approx(60e6, abs=1e3)      # ns
    assert root.attributes["rpc.grpc.status_code"] == "OK"


def test_a_failed_call_marks_its_span_as_an_error():
    observer, exporter = _observer()
    _finished_call(observer, status="Unavailable")
    (root,) = [s for s in exporter.get_finished_spans() if s.name.endswith("Generate")]
    assert not root.status.is_ok and root.attributes["rpc.grpc.status_code"] == "UNAVAILABLE"


def test_tracing_off_makes_no_spans_and_needs_no_sdk():
    tracing = Tracing.off()
    assert tracing.start_call("x", [("traceparent", TRACEPARENT)], 0.0) is None
    observer = RequestObserver(None, tracing)
    _finished_call(observer)                      # a log line only: nothing to observe


@pytest.mark.parametrize("status, code", [("OK", "OK"), ("CANCELLED", "CANCELLED"),
                                          ("InvalidRequest", "INVALID_ARGUMENT"),
                                          ("CapacityExceeded", "RESOURCE_EXHAUSTED"),
                                          ("Unavailable", "UNAVAILABLE"),
                                          ("KeyError", "INTERNAL")])
def test_status_words_map_to_grpc_codes(status, code):
    assert grpc_code(status) == code


def _format(formatter) -> str:
    record = logging.LogRecord("kiln.runtime.requests", logging.INFO, __file__, 1, "generate",
                               None, None)
    record.kiln = {"request_id": "r1", "status": "OK", "ttft_s": None, "output_tokens": 4}
    return formatter.format(record)


def test_json_lines_carry_the_fields_and_text_lines_key_values():
    entry = json.loads(_format(JsonFormatter()))
    assert entry["message"] == "generate" and entry["level"] == "INFO"
    assert entry["request_id"] == "r1" and entry["ttft_s"] is None and entry["output_tokens"] == 4
    assert entry["time"].endswith("+00:00")
    text = _format(KeyValueFormatter("%(message)s"))
    assert text == "generate request_id=r1 status=OK ttft_s=- output_tokens=4"


def test_configure_logging_refuses_an_unknown_format():
    with pytest.raises(InvalidRequest, match="--log-format"):
        configure_logging("INFO", "xml")


@pytest.mark.parametrize("listen", ["9090", ":9090", "host:port", "host:70000", ""])
def test_metrics_listen_must_be_host_and_port(listen):
    with pytest.raises(InvalidRequest, match="--metrics-listen"):
        MetricsEndpoint.parse(listen)


def test_metrics_listen_accepts_ipv6_and_port_zero():
    assert MetricsEndpoint.parse("[::1]:0") == MetricsEndpoint("::1", 0)
    assert MetricsEndpoint.parse("0.0.0.0:9400") == MetricsEndpoint("0.0.0.0", 9400)


def test_the_log_line_splits_ttft_into_queue_prefill_and_delivery(caplog):
    observer, _ = _observer()
    with caplog.at_level(logging.INFO, logger="kiln.runtime.requests"):
        _finished_call(observer)
    [line] = [r.kiln for r in caplog.records if getattr(r, "kiln", None)]
    assert line["ttft_s"] == 0.03 and line["queue_s"] == 0.01
    assert line["prefill_s"] == 0.016 and line["delivery_s"] == 0.004   # 26 - 10, 30 - 26 ms
