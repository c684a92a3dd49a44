"""A live runtime pod's /metrics after a known load, its JSON request log and its OTLP traces.

The pod of this module serves metrics on a loopback port, logs JSON and exports spans to an
OTLP receiver the test runs itself; a real Prometheus (Debian's `prometheus`, which .ci/run
installs) scrapes it and is queried through its HTTP API. Each test scrapes before and after its own load and checks
the differences, parsed with prometheus_client.parser, so the order of tests never matters.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from kiln.v1 import runtime_pb2
from support.kiln_servers import RuntimePod, runtime_stub

MODEL_NAME = "tiny-chat"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


class _OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on loopback that keeps what it is sent."""

    def __init__(self):
        self.spans = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            for scope in resource_spans.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def otlp():
    receiver = _OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(0)


@pytest.fixture(scope="module")
def observed_pod(tiny_engine, tmp_path_factory, otlp):
    tmp = tmp_path_factory.mktemp("observed")
    port_file = tmp / "metrics-port"
    pod = RuntimePod(tmp, tiny_engine["uri"], "--metrics-listen", "127.0.0.1:0",
                     "--metrics-port-file", str(port_file), "--served-model-name", MODEL_NAME,
                     "--log-format", "json", "--otlp-endpoint", f"http://127.0.0.1:{otlp[1]}",
                     env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    pod.wait_serving()
    pod.metrics_url = f"http://127.0.0.1:{port_file.read_text().strip()}/metrics"
    yield pod
    pod.stop()


@pytest.fixture
def observed_stub(observed_pod):
    with grpc.insecure_channel(observed_pod.address) as channel:
        yield runtime_stub(channel)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def generate(stub, prompt_len: int, max_new_tokens: int, request_id: str = "", metadata=()):
    message = runtime_pb2.GenerateRequest(
        request_id=request_id, token_ids=runtime_pb2.TokenIds(ids=list(range(5, 5 + prompt_len))),
        streaming=True, sampling=runtime_pb2.SamplingConfig(max_new_tokens=max_new_tokens,
                                                            ignore_eos=True))
    return list(stub.Generate(message, timeout=60, metadata=metadata))


LOAD = [(5, 4), (7, 6), (9, 8)]        # (prompt tokens, new tokens) of each request


def test_counts_equal_the_load_sent(observed_pod, observed_stub, tiny_engine):
    before = scrape(observed_pod.metrics_url)
    for prompt_len, new_tokens in LOAD:
        generate(observed_stub, prompt_len, new_tokens)
    bad = runtime_pb2.GenerateRequest(token_ids=runtime_pb2.TokenIds(ids=[10 ** 9]))
    with pytest.raises(grpc.RpcError) as refused:
        list(observed_stub.Generate(bad, timeout=30))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    labels = {"engine_key": tiny_engine["engine_key"], "model": MODEL_NAME}
    n = len(LOAD)
    # A refused call's status reaches the client as the server aborts it, a moment before the
    # call's record is closed: wait (bounded) for all n + 1 calls to be counted.
    deadline = time.monotonic() + 10
    after = scrape(observed_pod.metrics_url)
    while time.monotonic() < deadline and value(after, "kiln_requests_total", **labels) < \
            value(before, "kiln_requests_total", **labels) + n + 1:
        time.sleep(0.02)
        after = scrape(observed_pod.metrics_url)

    def delta(name, **extra):
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("kiln_requests_total", code="OK", finish_reason="length") == n
    assert delta("kiln_requests_total", code="INVALID_ARGUMENT", finish_reason="") == 1
    assert delta("kiln_requests_total") == n + 1
    assert delta("kiln_prompt_tokens_total") == sum(p for p, _ in LOAD)
    assert delta("kiln_generation_tokens_total") == sum(t for _, t in LOAD)
    assert delta("kiln_prefix_cached_tokens_total") == 0
    # The refused request never reached the engine: only the status counter saw it.
    for histogram in ("time_to_first_token_seconds", "time_per_output_token_seconds",
                      "e2e_request_latency_seconds", "request_queue_time_seconds",
                      "request_prompt_tokens", "request_generation_tokens"):
        assert delta(f"kiln_{histogram}_count") == n, histogram
        assert delta(f"kiln_{histogram}_bucket", le="+Inf") == n, histogram
    assert delta("kiln_request_prompt_tokens_sum") == sum(p for p, _ in LOAD)
    assert delta("kiln_request_generation_tokens_sum") == sum(t for _, t in LOAD)
    assert delta("kiln_request_generation_tokens_bucket", le="4.0") == 0
    assert delta("kiln_request_generation_tokens_bucket", le="8.0") == n
    assert delta("kiln_engine_steps_total") >= max(t for _, t in LOAD)
    # Gauges read from the engine at scrape time: idle again, every block back (the step loop
    # frees a request's blocks just after handing on its last token, so allow it that moment).
    deadline = time.monotonic() + 10
    idle = after
    while time.monotonic() < deadline and (value(idle, "kiln_requests_live", **labels)
                                           or value(idle, "kiln_kv_blocks_used", **labels)):
        time.sleep(0.02)
        idle = scrape(observed_pod.metrics_url)
    assert value(idle, "kiln_requests_live", **labels) == 0
    assert value(idle, "kiln_requests_running", **labels) == 0
    assert value(idle, "kiln_kv_blocks_used", **labels) == 0
    assert value(idle, "kiln_kv_blocks_total", **labels) > 0
    assert (("kiln_preemptions_total", tuple(sorted(labels.items()))) in idle)


def test_a_cancelled_stream_counts_as_cancelled(observed_pod, observed_stub):
    before = scrape(observed_pod.metrics_url)
    message = runtime_pb2.GenerateRequest(
        token_ids=runtime_pb2.TokenIds(ids=[5, 6, 7]), streaming=True,
        sampling=runtime_pb2.SamplingConfig(max_new_tokens=1000, ignore_eos=True))
    call = observed_stub.Generate(message, timeout=60)
    next(call)
    call.cancel()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = scrape(observed_pod.metrics_url)
        if value(after, "kiln_requests_total", code="CANCELLED") > \
                value(before, "kiln_requests_total", code="CANCELLED"):
            break
        time.sleep(0.05)
    assert value(after, "kiln_requests_total", code="CANCELLED") - \
        value(before, "kiln_requests_total", code="CANCELLED") == 1
    assert value(after, "kiln_requests_total", code="OK") == \
        value(before, "kiln_requests_total", code="OK")


def test_one_json_log_line_per_request(observed_pod, observed_stub):
    generate(observed_stub, 6, 3, request_id="json-log-probe")
    deadline = time.monotonic() + 10
    lines = []
    while time.monotonic() < deadline and not lines:
        lines = [json.loads(line) for line in observed_pod.log().splitlines()
                 if "json-log-probe" in line]
        time.sleep(0.05)
    (entry,) = lines
    assert entry["message"] == "generate" and entry["status"] == "OK"
    assert entry["request_id"] == "json-log-probe" and entry["finish_reason"] == "length"
    assert (entry["prompt_tokens"], entry["output_tokens"], entry["cached_tokens"]) == (6, 3, 0)
    assert 0 < entry["ttft_s"] <= entry["duration_s"] and entry["queue_s"] >= 0


def test_generate_spans_join_the_callers_trace(observed_stub, otlp):
    receiver, _ = otlp
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
    generate(observed_stub, 5, 4, request_id="traced", metadata=(("traceparent", traceparent),))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ours = [s for s in receiver.spans if s.trace_id.hex() == TRACE_ID]
        if len(ours) >= 5:
            break
        time.sleep(0.05)
    by_name = {s.name: s for s in ours}
    assert set(by_name) == {"kiln.v1.Runtime/Generate", "queue", "prefill", "decode", "stream"}
    root = by_name.pop("kiln.v1.Runtime/Generate")
    assert root.parent_span_id.hex() == PARENT_SPAN_ID
    assert all(s.parent_span_id == root.span_id for s in by_name.values())
    assert by_name["queue"].end_time_unix_nano <= by_name["prefill"].end_time_unix_nano \
        <= by_name["decode"].end_time_unix_nano <= root.end_time_unix_nano
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["kiln.request_id"].string_value == "traced"
    assert attributes["kiln.output_tokens"].int_value == 4


def test_metrics_are_off_unless_asked_for():
    from runtime_service.server.observability import ObservabilitySettings, PodObservability
    off = PodObservability(ObservabilitySettings(), host=None)
    assert off.metrics is None and off.start() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prometheus_query(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="needs Debian's prometheus package (.ci/run installs it)")
def test_a_real_prometheus_scrapes_the_pod_and_answers_queries(observed_pod, observed_stub,
                                                               tiny_engine, tmp_path):
    generate(observed_stub, 4, 5, request_id="prometheus-probe")
    target = observed_pod.metrics_url.split("//")[1].split("/")[0]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "kiln-runtime",
                            "static_configs": [{"targets": [target]}]}]}))
    port = _free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    server = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        ours = value(scrape(observed_pod.metrics_url), "kiln_generation_tokens_total")
        query = f'sum(kiln_generation_tokens_total{{model="{MODEL_NAME}"}})'
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and seen != ours:
            try:
                result = _prometheus_query(port, query)
                seen = float(result[0]["value"][1]) if result else None
            except OSError:
                seen = None             # not listening yet
            time.sleep(0.25)
        assert seen == ours > 0
        (kv,) = _prometheus_query(port, "kiln_kv_blocks_total")
        assert kv["metric"]["engine_key"] == tiny_engine["engine_key"]
        assert kv["metric"]["model"] == MODEL_NAME and float(kv["value"][1]) > 0
        p95 = _prometheus_query(port, "histogram_quantile(0.95, sum by (le) "
                                      "(kiln_time_to_first_token_seconds_bucket))")
        assert p95 and float(p95[0]["value"][1]) > 0
    finally:
        server.terminate()
        server.wait(20)
        log.close()
