"""The pod benchmark reads the pod's own TTFT from its request log: the lines the real formatter
writes, matched to the bench's request ids (no pod needed)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import grpc_load  # noqa: E402

from runtime_service.server.log_format import KeyValueFormatter  # noqa: E402


def generate_line(request_id: str, ttft_s, prefill_s=0.02, started=1796400000.5) -> str:
    """A `generate` line as the pod's text log writes it (request_log.RequestObserver)."""
    record = logging.LogRecord("kiln.request", logging.INFO, __file__, 1, "generate", None, None)
    delivery = None if ttft_s is None else round(ttft_s - prefill_s - 0.0001, 4)
    record.kiln = {"request_id": request_id, "status": "OK", "finish_reason": "length",
                   "prompt_tokens": 1024, "output_tokens": 1, "cached_tokens": 0,
                   "ttft_s": ttft_s, "queue_s": 0.0001, "prefill_s": prefill_s,
                   "delivery_s": delivery, "duration_s": 0.03, "started_unix_s": started}
    return KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s").format(record)


def test_the_pods_ttft_is_read_per_request_and_reported_as_a_median(tmp_path):
    log = tmp_path / "runtime.log"
    log.write_text("\n".join([
        "2026-12-03 17:00:00 INFO kiln.runtime startup total_s=1.0",
        generate_line("bench-ttft_ms-1024-20-1", 0.0241, 0.022),
        generate_line("bench-ttft_ms-1024-21-2", 0.0236, 0.021),
        generate_line("bench-ttft_ms-1024-22-3", 0.0250, 0.023),
        generate_line("bench-ttft_idle_ms-1024-30-4", 0.0229),
        generate_line("someone-else", 0.5),
        generate_line("bench-ttft_idle_ms-1024-31-5", None),     # ended before a token
    ]) + "\n")
    seen = grpc_load.server_ttfts_s(log)
    assert seen["bench-ttft_ms-1024-21-2"]["ttft_s"] == 0.0236
    assert seen["bench-ttft_ms-1024-21-2"]["delivery_s"] == 0.0025
    assert seen["bench-ttft_idle_ms-1024-31-5"]["ttft_s"] is None        # no token: left out
    ids = {("ttft_ms", 1024): ["bench-ttft_ms-1024-20-1", "bench-ttft_ms-1024-21-2",
                               "bench-ttft_ms-1024-22-3"],
           ("ttft_idle_ms", 1024): ["bench-ttft_idle_ms-1024-30-4",
                                    "bench-ttft_idle_ms-1024-31-5", "never-logged"]}
    lines = []
    figures = grpc_load.server_side(ids, seen, lines.append)
    assert figures["server_ttft_ms"] == {"1024": 24.1}
    assert figures["server_ttft_idle_ms"] == {"1024": 22.9}
    split = figures["server_ttft_split_ms"]["1024"]            # medians of each part
    assert split == {"queue": 0.1, "prefill": 22.0, "delivery": 2.0}
    assert lines == ["Kiln gRPC TTFT 1024 as the pod saw it: 24.1 ms back to back, "
                     "22.9 ms after idle",
                     "Kiln gRPC TTFT 1024 in the pod: queue 0.10 ms, prefill 22.00 ms, "
                     "delivery 2.00 ms"]


def test_what_the_client_saw_around_the_pod_is_split_by_the_pods_start_stamp(tmp_path):
    """The client's call -> the pod's handler, and the pod's first token -> the client's first
    chunk, from both sides' wall clocks (the same host)."""
    log = tmp_path / "runtime.log"
    log.write_text("\n".join([
        generate_line("bench-ttft_ms-128-20-1", 0.0060, 0.005, started=100.0010),
        generate_line("bench-ttft_ms-128-21-2", 0.0058, 0.005, started=200.0012),
        generate_line("bench-ttft_ms-128-22-3", 0.0061, 0.005, started=300.0009),
        generate_line("bench-ttft_idle_ms-128-30-4", 0.0059, 0.005, started=400.0010),
    ]) + "\n")
    walls = {"bench-ttft_ms-128-20-1": (100.0, 100.0080),       # 1.0 in, 6.0 pod, 1.0 back
             "bench-ttft_ms-128-21-2": (200.0, 200.0085),       # 1.2 in, 5.8 pod, 1.5 back
             "bench-ttft_ms-128-22-3": (300.0, 300.0079)}       # 0.9 in, 6.1 pod, 0.9 back
    ids = {("ttft_ms", 128): list(walls), ("ttft_idle_ms", 128): ["bench-ttft_idle_ms-128-30-4"]}
    lines = []
    figures = grpc_load.server_side(ids, grpc_load.server_ttfts_s(log), lines.append, walls)
    around = figures["client_ttft_split_ms"]
    assert list(around) == ["128"]                  # the idle requests have no client stamps
    assert abs(around["128"]["to_pod"] - 1.0) < 1e-6 and abs(around["128"]["from_pod"] - 1.0) < 1e-6
    assert lines[-1] == ("Kiln gRPC TTFT 128 around the pod: to its handler 1.00 ms, back to "
                         "the client 1.00 ms")
    assert grpc_load.client_split({}, walls) == {}


def test_a_load_run_is_seen_in_the_pod_as_its_arrival_spread_queues_and_durations(tmp_path):
    """Only the run's own requests count; the spread is first to last handler start."""
    log = tmp_path / "runtime.log"
    log.write_text("\n".join([
        generate_line("load-0-a", 0.050, started=10.000),
        generate_line("load-0-b", 0.070, started=10.040),
        generate_line("load-0-c", 0.060, started=10.010),
        generate_line("other-run", 9.0, started=99.0),
    ]) + "\n")
    walls = {"load-0-a": (9.990, 10.06), "load-0-b": (10.002, 10.1), "other-run": (0.0, 1.0)}
    view = grpc_load.load_run_view(["load-0-a", "load-0-b", "load-0-c", "lost"],
                                   grpc_load.server_ttfts_s(log), walls)
    assert view["logged"] == 3 and abs(view["send_spread_ms"] - 12.0) < 1e-3
    assert abs(view["arrival_spread_ms"] - 40.0) < 1e-3
    assert view["ttft_ms_median"] == 60.0 and view["queue_ms_max"] == 0.1
    assert view["duration_ms_median"] == 30.0
    assert grpc_load.load_run_view(["lost"], {}) == {}
