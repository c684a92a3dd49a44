"""The Builder's /metrics and Build traces after a known set of builds: one built from a local
folder, the same again (a cache hit), one from an s3:// source (bytes pulled) and one refused.

The server runs in this process on its own event loop thread, so the test can hand it an
in-memory span exporter; /metrics is scraped over HTTP on loopback and parsed with
prometheus_client.parser.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request

import grpc
import pytest
from kiln.v1 import builder_pb2, builder_pb2_grpc, engine_pb2
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from builder_service.server import ServerOptions, start_server
from builder_service.sources import is_source_file
from runtime_service.format.engine_format import read_manifest
from runtime_service.server.tracing import Tracing
from runtime_service.store import open_store

from support.servers import BUCKET

TRACEPARENT = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01"


@pytest.fixture(scope="module")
def metered_builder(tmp_path_factory, tiny_hf, s3):
    base = tmp_path_factory.mktemp("metered")
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exporter), "kiln-builder-test")
    options = ServerOptions(store_uri=str(base / "store"), work_dir=base / "work",
                            listen="127.0.0.1:0", allowed_roots=(tiny_hf.parent,),
                            s3_settings=s3.settings, metrics_listen="127.0.0.1:0")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(start_server(options, tracing), loop).result(30)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield builder_pb2_grpc.BuilderStub(channel), running, exporter, base / "store"
    channel.close()
    asyncio.run_coroutine_threadsafe(running.stop(1.0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families for s in family.samples}


def build(stub, source: str, metadata=(), max_seq_len: int = 256):
    request = builder_pb2.BuildRequest(source=source, settings=engine_pb2.BuildSettings(
        dtype="float32", max_seq_len=max_seq_len))
    return list(stub.Build(request, timeout=120, metadata=metadata))


def test_builds_by_outcome_stage_times_and_bytes_equal_the_builds_made(metered_builder, tiny_hf,
                                                                      s3):
    stub, running, exporter, store = metered_builder
    source_prefix = f"s3://{BUCKET}/metrics-source"
    source_store = open_store(source_prefix, s3.settings)
    pulled = 0
    for path in sorted(tiny_hf.rglob("*")):
        rel = path.relative_to(tiny_hf).as_posix()
        if path.is_file() and is_source_file(rel):
            source_store.put_file(rel, path)
            pulled += path.stat().st_size

    built = build(stub, str(tiny_hf), metadata=(("traceparent", TRACEPARENT),))[-1].result
    cached = build(stub, str(tiny_hf))[-1].result
    from_s3 = build(stub, source_prefix, max_seq_len=128)[-1].result   # same weights: a new key
    with pytest.raises(grpc.RpcError) as refused:
        build(stub, "ftp://nowhere/model")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not built.cached and cached.cached and not from_s3.cached

    published = 0
    for result in (built, from_s3):
        manifest = read_manifest(store / "engines" / result.engine.ref.engine_key)
        published += sum(entry.size_bytes for entry in manifest.files)

    samples = scrape(running.metrics_port)
    assert samples[("kiln_builds_total", (("outcome", "built"),))] == 2
    assert samples[("kiln_builds_total", (("outcome", "cached"),))] == 1
    assert samples[("kiln_builds_total", (("outcome", "INVALID_ARGUMENT"),))] == 1
    assert samples[("kiln_build_cache_hits_total", ())] == 1
    assert samples[("kiln_build_published_bytes_total", ())] == published
    assert samples[("kiln_build_pulled_bytes_total", ())] == pulled
    assert samples[("kiln_builds_in_progress", ())] == 0

    def stage_count(stage):
        return samples.get(("kiln_build_stage_duration_seconds_count", (("stage", stage),)), 0)

    assert stage_count("queued") == 4            # every call, the refused one too
    assert stage_count("convert") == 2 and stage_count("publish") == 2
    assert stage_count("pull") == 1

    spans = [s for s in exporter.get_finished_spans()
             if format(s.context.trace_id, "032x") == TRACEPARENT.split("-")[1]]
    (root,) = [s for s in spans if s.name == "kiln.v1.Builder/Build"]
    assert format(root.parent.span_id, "016x") == TRACEPARENT.split("-")[2]
    stages = [s.name for s in sorted(spans, key=lambda s: s.start_time) if s is not root]
    assert stages[0] == "queued" and {"convert", "write", "manifest", "publish"} <= set(stages)
    assert root.attributes["kiln.outcome"] == "built"
