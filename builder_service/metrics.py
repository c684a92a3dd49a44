"""What each Build call leaves behind: Prometheus metrics, an optional trace and one log line.

The builder already reports its progress as BuildProgress events (stage, done, total, unit); a
BuildRecord watches that stream, so nothing inside the build pipeline knows about metrics. A
stage lasts from its first event to the next stage's first event (or the end of the call):

- `kiln_builds_total{outcome}`: built, cached, or the gRPC code of the failure (CANCELLED too);
- `kiln_build_stage_duration_seconds{stage}`: queued (waiting for a build slot), resolve,
  pull, digest, wait, calibrate (AWQ), convert, write, manifest, publish;
- `kiln_build_published_bytes_total` and `kiln_build_pulled_bytes_total` (s3:// sources);
- `kiln_build_cache_hits_total`, and `kiln_builds_in_progress`.
"""

from __future__ import annotations

import logging
import threading
import time

from builder_service.pipeline import BuildProgress
from runtime_service.server.tracing import Tracing

log = logging.getLogger("kiln.builder.builds")

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
BYTE_STAGES = {"publish": "published", "pull": "pulled"}


class BuilderMetrics:
    """The builder's metrics in a registry of their own (prometheus-client is imported only
    when metrics are on)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = r = CollectorRegistry()
        self.builds = Counter("kiln_builds", "Build calls by outcome: built, cached or the "
                              "gRPC code of the failure.", ["outcome"], registry=r)
        self.stage_duration = Histogram("kiln_build_stage_duration_seconds",
                                        "Time spent in each build stage.", ["stage"],
                                        buckets=STAGE_BUCKETS, registry=r)
        self.published_bytes = Counter("kiln_build_published_bytes",
                                       "Engine bytes uploaded to the store.", registry=r)
        self.pulled_bytes = Counter("kiln_build_pulled_bytes",
                                    "Source bytes pulled from S3 for builds.", registry=r)
        self.cache_hits = Counter("kiln_build_cache_hits",
                                  "Builds answered from the store without building.", registry=r)
        self.in_progress = Gauge("kiln_builds_in_progress", "Build calls running now.",
                                 registry=r)


class BuildRecord:
    """One Build call, fed its progress events from whichever thread reports them."""

    def __init__(self, observer: "BuildObserver", metadata, source: str):
        self._observer = observer
        self._lock = threading.Lock()
        self.started_s = time.monotonic()
        self._started_wall = time.time()
        self.source = source
        self.stages: list[tuple[str, float]] = []       # (stage, monotonic start)
        self.bytes = {"published": 0, "pulled": 0}
        self.finished = False
        self.span = observer.tracing.start_call("kiln.v1.Builder/Build", metadata,
                                                self._started_wall, {"kiln.source": source})
        if observer.metrics is not None:
            observer.metrics.in_progress.inc()

    def progress(self, event: BuildProgress) -> None:
        with self._lock:
            if not self.stages or self.stages[-1][0] != event.stage:
                self.stages.append((event.stage, time.monotonic()))
            kind = BYTE_STAGES.get(event.stage)
            if kind is not None and event.unit == "bytes":
                self.bytes[kind] = max(self.bytes[kind], event.done)

    def finish(self, outcome: str, engine_key: str = "") -> None:
        """Ends the record once: later calls do nothing."""
        if not self.finished:
            self.finished = True
            self._observer.finish(self, outcome, engine_key)

    def durations(self, ended: float) -> list[tuple[str, float, float]]:
        """(stage, start, end) in monotonic seconds, each stage ending where the next starts."""
        with self._lock:
            stages = list(self.stages)
        ends = [start for _, start in stages[1:]] + [ended]
        return [(stage, start, end) for (stage, start), end in zip(stages, ends)]

    def wall(self, monotonic_s: float) -> float:
        return self._started_wall + (monotonic_s - self.started_s)


class BuildObserver:
    def __init__(self, metrics: BuilderMetrics | None = None, tracing: Tracing = Tracing.off()):
        self.metrics = metrics
        self.tracing = tracing

    def start(self, metadata, source: str) -> BuildRecord:
        return BuildRecord(self, metadata, source)

    def finish(self, record: BuildRecord, outcome: str, engine_key: str) -> None:
        ended = time.monotonic()
        stages = record.durations(ended)
        seconds = ended - record.started_s
        log.info("build", extra={"kiln": {
            "source": record.source, "outcome": outcome, "engine_key": engine_key,
            "duration_s": round(seconds, 3), "published_bytes": record.bytes["published"],
            "pulled_bytes": record.bytes["pulled"],
            "stages": ",".join(f"{stage}:{end - start:.2f}" for stage, start, end in stages)}})
        m = self.metrics
        if m is not None:
            m.in_progress.dec()
            m.builds.labels(outcome).inc()
            if outcome == "cached":
                m.cache_hits.inc()
            m.published_bytes.inc(record.bytes["published"])
            m.pulled_bytes.inc(record.bytes["pulled"])
            for stage, start, end in stages:
                m.stage_duration.labels(stage).observe(end - start)
        if record.span is not None:
            for stage, start, end in stages:
                self.tracing.phase(record.span, stage, record.wall(start), record.wall(end))
            code = "OK" if outcome in ("built", "cached") else outcome
            self.tracing.end_call(record.span, record.wall(ended), code,
                                  {"kiln.outcome": outcome, "kiln.engine_key": engine_key})
