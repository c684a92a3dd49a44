"""bench_decode's second mode: the same loads through a real runtime pod over gRPC.

The random-weight model is saved as an HF folder, built into an engine by the real builder CLI
with the same build limits as the in-process run, and served by `python -m runtime_service
serve` on loopback; the loads then go through `kiln.v1.Runtime/Generate` streams, so the figures
include the server, protobuf and the socket. Keys match bench_decode's in-process report.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench_grpc_streaming import generate_batch

REPO = Path(__file__).resolve().parents[1]


def build_engine(hf_folder: Path, store: Path, build, device: str, dtype: str) -> str:
    """The engine URI `python -m builder_service build` publishes for the bench's limits."""
    done = subprocess.run(
        [sys.executable, "-m", "builder_service", "build", "--model", str(hf_folder),
         "--store", str(store), "--dtype", dtype, "--target-device", device,
         "--max-batch-size", str(build.max_batch_size), "--max-input-len", str(build.max_input_len),
         "--max-seq-len", str(build.max_seq_len), "--max-num-tokens", str(build.max_num_tokens)],
        capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"engine build failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["uri"]


def server_side(ttft_ids: dict, seen: dict[str, dict[str, float]], log,
                walls: dict[str, tuple[float, float]] | None = None) -> dict:
    """The pod's own TTFT per figure and length, the median of the requests it logged, and for
    back-to-back requests its split: queue (arrival -> first step), prefill (first step -> the
    engine's first token) and delivery (that token -> the gRPC call), medians each. With the
    client's `walls` (request id -> when the call began and its first chunk came, wall clock),
    also what the client saw around the pod: `to_pod` (call -> the pod's handler) and
    `from_pod` (the pod's first token -> the client), from the log's `started_unix_s`."""
    figures: dict[str, dict] = {"server_ttft_ms": {}, "server_ttft_idle_ms": {},
                                "server_ttft_split_ms": {}, "client_ttft_split_ms": {}}
    for (key, length), ids in ttft_ids.items():
        logged = [seen[i] for i in ids if i in seen and seen[i].get("ttft_s") is not None]
        if not logged:
            continue
        figures[f"server_{key}"][str(length)] = _median_ms(logged, "ttft_s")
        parts = {part: _median_ms(logged, f"{part}_s")
                 for part in ("queue", "prefill", "delivery")}
        if key == "ttft_ms" and None not in parts.values():
            figures["server_ttft_split_ms"][str(length)] = parts
        around = client_split({i: seen[i] for i in ids if i in seen}, walls or {})
        if key == "ttft_ms" and around:
            figures["client_ttft_split_ms"][str(length)] = around
    for length in sorted({length for _, length in ttft_ids}):
        back = figures["server_ttft_ms"].get(str(length))
        idle = figures["server_ttft_idle_ms"].get(str(length))
        if back is not None and idle is not None:
            log(f"Kiln gRPC TTFT {length} as the pod saw it: {back:.1f} ms back to back, "
                f"{idle:.1f} ms after idle")
        split = figures["server_ttft_split_ms"].get(str(length))
        if split is not None:
            log(f"Kiln gRPC TTFT {length} in the pod: queue {split['queue']:.2f} ms, prefill "
                f"{split['prefill']:.2f} ms, delivery {split['delivery']:.2f} ms")
        around = figures["client_ttft_split_ms"].get(str(length))
        if around is not None:
            log(f"Kiln gRPC TTFT {length} around the pod: to its handler {around['to_pod']:.2f}"
                f" ms, back to the client {around['from_pod']:.2f} ms")
    return figures


def client_split(logged: dict[str, dict], walls: dict[str, tuple[float, float]]) -> dict:
    """Medians over the requests both sides timed, in ms: the call's way to the pod's handler
    and its first token's way back (client and pod share the host's wall clock)."""
    to_pod, from_pod = [], []
    for request_id, row in logged.items():
        if request_id not in walls or None in (row.get("started_unix_s"), row.get("ttft_s")):
            continue
        sent, first = walls[request_id]
        to_pod.append(1e3 * (row["started_unix_s"] - sent))
        from_pod.append(1e3 * (first - row["started_unix_s"] - row["ttft_s"]))
    if not to_pod:
        return {}
    return {"to_pod": statistics.median(to_pod), "from_pod": statistics.median(from_pod)}


def _median_ms(logged: list[dict], field: str) -> float | None:
    values = sorted(1e3 * row[field] for row in logged if row.get(field) is not None)
    return values[len(values) // 2] if values else None


class RuntimePod:
    """A runtime process on 127.0.0.1, SERVING once `wait` returns; `stop` drains it.

    With `metrics`, the pod serves /metrics (--metrics-listen) and `scraper()` reads it the
    way Prometheus would, so a run measures what recording and scraping cost. `engine_core`:
    the pod's --engine-core (the step loop on a thread of the gRPC process, or its own process);
    `attention_backend`: its --attention-backend."""

    def __init__(self, engine_uri: str, work: Path, device: str, max_new_tokens: int,
                 metrics: bool = False, engine_core: str = "process",
                 attention_backend: str = "auto"):
        self.port_file = work / "runtime.port"
        self.metrics_port_file = work / "metrics.port"
        for stale in (self.port_file, self.metrics_port_file):
            stale.unlink(missing_ok=True)
        self.log_path = work / "runtime.log"
        self.log = open(self.log_path, "w")
        self.started = time.monotonic()
        flags = (["--metrics-listen", "127.0.0.1:0", "--metrics-port-file",
                  str(self.metrics_port_file)] if metrics else [])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runtime_service", "serve", "--engine", engine_uri,
             "--listen", "127.0.0.1:0", "--port-file", str(self.port_file), "--device", device,
             "--cache-dir", str(work / "cache"), "--max-new-tokens", str(max_new_tokens),
             "--max-queue-size", "4096", "--engine-core", engine_core,
             "--attention-backend", attention_backend, *flags],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)

    def scraper(self, interval_s: float) -> "MetricsScraper":
        return MetricsScraper(f"http://127.0.0.1:{self.metrics_port_file.read_text().strip()}"
                              "/metrics", interval_s)

    def wait(self, timeout_s: float = 900.0) -> str:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the runtime exited with {self.process.returncode}")
            if self.port_file.is_file() and self.port_file.read_text().strip():
                address = f"127.0.0.1:{self.port_file.read_text().strip()}"
                with grpc.insecure_channel(address) as channel:
                    try:
                        status = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=2).status
                    except grpc.RpcError:
                        status = None
                if status == health_pb2.HealthCheckResponse.SERVING:
                    self.serving_after_s = time.monotonic() - self.started
                    return address
            time.sleep(0.5)
        raise RuntimeError(f"the runtime was not SERVING within {timeout_s:.0f} s")

    def startup(self) -> dict:
        """Popen to SERVING as this side saw it, and the pod's own `startup ...` phases."""
        from runtime_service.server.startup_report import LOG_PREFIX, StartupReport
        self.log.flush()
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines()
                 if LOG_PREFIX in line]
        phases = StartupReport.parse_log_line(lines[-1]) if lines else {}
        return {"popen_to_serving_s": getattr(self, "serving_after_s", None), "phases": phases}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class MetricsScraper:
    """GETs /metrics every `interval_s` on a thread until stopped; counts scrapes and bytes."""

    def __init__(self, url: str, interval_s: float):
        self.url = url
        self.interval_s = interval_s
        self.num_scrapes = 0
        self.last_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with urllib.request.urlopen(self.url, timeout=10) as response:
                self.last_bytes = len(response.read())
            self.num_scrapes += 1

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(15)
        return {"scrape_interval_s": self.interval_s, "num_scrapes": self.num_scrapes,
                "exposition_bytes": self.last_bytes}


def measure(address: str, prompts, ttft_prompts, loads, quick: bool, log,
            ttft_idle_s: float = 1.0, pod_log: Path | None = None) -> dict:
    """tpot_ms_batch1, ttft_ms and throughput, as bench_decode reports them in-process. With
    the pod's log, also the TTFT the pod saw itself (`server_ttft_ms`, `server_ttft_idle_ms`):
    from its Generate handler's start to the first token reaching it. The client's TTFT minus
    that is what gRPC and the client add; that minus the in-process TTFT is the pod's own path."""
    return asyncio.run(_measure(address, prompts, ttft_prompts, loads, quick, log, ttft_idle_s,
                                pod_log))


def server_ttfts_s(log_path: Path) -> dict[str, dict[str, float]]:
    """request_id -> the timing fields (`*_s`, None when absent) of the pod's `generate` lines
    (text log format)."""
    found = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = _GENERATE_LINE.search(line)
        if match:
            found[match.group(1)] = {key: None if value == "-" else float(value)
                                     for key, value in _TIMING.findall(line)}
    return found


_GENERATE_LINE = re.compile(r" generate request_id=(\S+) ")
_TIMING = re.compile(r"\b(\w+_s)=(\S+)")


async def _measure(address: str, prompts, ttft_prompts, loads, quick: bool, log,
                   ttft_idle_s: float, pod_log: Path | None) -> dict:
    """Every figure on one channel, connected before the first, as a client keeps it."""
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        run = lambda batch, n, ids=None: generate_batch(channel, batch, n, ids)  # noqa: E731
        await run(prompts(2, 1024, 9), 4)                                  # warm-up
        new_tokens = 32 if quick else 128
        tpots = [(await run(prompts(1, 128, 1), new_tokens + 1))["per_token_latency_ms"]
                 for _ in range(2)]
        result = {"tpot_ms_batch1": min(tpots), "ttft_ms": {}, "ttft_idle_ms": {},
                  "throughput": {}}
        log(f"Kiln gRPC batch-1 time per output token {result['tpot_ms_batch1']:.2f} ms")
        ttft_ids: dict[tuple[str, int], list[str]] = {}
        walls: dict[str, tuple[float, float]] = {}
        for length in ttft_prompts:
            # other prompts after idle, so a pod with block reuse cannot serve them from cache
            for key, idle_s, seeds in (("ttft_ms", 0.0, 20), ("ttft_idle_ms", ttft_idle_s, 30)):
                times = []
                for seed in range(seeds, seeds + 3):
                    await asyncio.sleep(idle_s)
                    request_id = f"bench-{key}-{length}-{seed}-{time.monotonic_ns()}"
                    ttft_ids.setdefault((key, length), []).append(request_id)
                    done = await run(prompts(1, length, seed), 1, [request_id])
                    times.append(done["ttft_ms"])
                    walls |= done["walls"]
                result[key][str(length)] = sorted(times)[1]
            log(f"Kiln gRPC TTFT {length}: {result['ttft_ms'][str(length)]:.1f} ms back to "
                f"back, {result['ttft_idle_ms'][str(length)]:.1f} ms after {ttft_idle_s:g} s idle")
        if pod_log is not None:
            result |= server_side(ttft_ids, server_ttfts_s(pod_log), log, walls)
        for concurrency, input_len, output_len in loads:
            name = f"{concurrency}x{input_len}/{output_len}"
            # as in-process: short-prompt loads run three times and report the median
            rates, run_ids, run_walls = [], [], []
            for repeat in range(3 if input_len <= 128 else 1):
                ids = [f"bench-load-{name.replace('/', '.')}-{repeat}-{i}-{time.monotonic_ns()}"
                       for i in range(concurrency)]
                done = await run(prompts(concurrency, input_len, 3 + repeat), output_len, ids)
                rates.append(done["tokens_per_s"])
                run_ids.append(ids)
                run_walls.append(done["walls"])
            rate = statistics.median(rates)
            result["throughput"][name] = {"output_tokens_per_s": rate, "runs_tokens_per_s": rates}
            log(f"Kiln gRPC {name}: {rate:.0f} tok/s (median of {[round(r) for r in rates]})")
            if pod_log is not None:
                seen = server_ttfts_s(pod_log)
                views = [load_run_view(ids, seen, walls) for ids, walls in zip(run_ids, run_walls)]
                result["throughput"][name]["runs_in_the_pod"] = views
                for repeat, view in enumerate(views):
                    if view:
                        log(f"Kiln gRPC {name} run {repeat + 1} in the pod: sent over "
                            f"{view.get('send_spread_ms', float('nan')):.1f} ms, arrived over "
                            f"{view['arrival_spread_ms']:.1f} ms, queue median "
                            f"{view['queue_ms_median']:.1f} / max {view['queue_ms_max']:.1f} ms, "
                            f"TTFT median {view['ttft_ms_median']:.1f} ms, duration median "
                            f"{view['duration_ms_median']:.0f} ms")
    return result


def load_run_view(ids: list[str], seen: dict[str, dict[str, float]],
                  walls: dict[str, tuple[float, float]] | None = None) -> dict:
    """One load run as the pod logged it, in ms: how far apart its calls reached the handler
    (first to last `started_unix_s`), and the medians (and the largest queue) of its requests'
    queue, TTFT and duration; with the client's `walls` (request id -> when its call began and
    its first chunk came), also how far apart the client began them. A slow run that the
    in-process engine does not share shows here as a slow client (send spread), late arrivals
    (gRPC), long queues (the engine core) or none of these (delivery)."""
    rows = [seen[i] for i in ids if i in seen]
    starts = [row["started_unix_s"] for row in rows if row.get("started_unix_s") is not None]
    if not rows or not starts:
        return {}

    def median_ms(field: str) -> float:         # NaN where no request logged the field
        value = _median_ms(rows, field)
        return float("nan") if value is None else value

    queues = [row["queue_s"] for row in rows if row.get("queue_s") is not None]
    sent = [walls[i][0] for i in ids if i in (walls or {})]
    spread = {"send_spread_ms": 1e3 * (max(sent) - min(sent))} if sent else {}
    return spread | {"logged": len(rows), "arrival_spread_ms": 1e3 * (max(starts) - min(starts)),
                     "queue_ms_median": median_ms("queue_s"),
                     "queue_ms_max": 1e3 * max(queues) if queues else float("nan"),
                     "ttft_ms_median": median_ms("ttft_s"),
                     "duration_ms_median": median_ms("duration_s")}
