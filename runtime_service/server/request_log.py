"""What a Generate call leaves behind when it ends: one log line, its metrics and its trace.

The servicer opens a RequestRecord when the call starts, tells it when outputs arrive (one cheap
check per batch, no per-token work) and closes it in `finally`. Everything is derived there from
timestamps and the ResponseAssembler's counts, so the step loop never does observability work:

- TTFT: call start (`started_unix_s` on the log line) -> first batch with a token; time per
  output token: first token -> last batch, over the tokens after the first; queue time: the
  engine request's arrival -> its first scheduled step (`Request.first_scheduled_time`, stamped
  once by the scheduler).
- The log line also splits TTFT further: prefill, first scheduled step -> the engine's first
  token (`Request.first_output_time`), and delivery, that token -> the call holding it. With
  the engine core in its own process delivery is the pipe and the event loop; the split says
  whether a slow first token was the GPU's or the pod's (bench/grpc_load.py reads it).
- status: the gRPC code the client saw (OK, CANCELLED when the call ended early, or the code
  of the typed error: runtime_service.errors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from runtime_service import errors
from runtime_service.server.metrics import RuntimeMetrics
from runtime_service.server.tracing import Tracing

log = logging.getLogger("kiln.runtime.requests")


def _error_codes() -> dict[str, str]:
    codes, todo = {}, [errors.KilnError]
    while todo:
        cls = todo.pop()
        codes[cls.__name__] = cls.status
        todo.extend(cls.__subclasses__())
    return codes


def grpc_code(status: str) -> str:
    """The gRPC code name for the servicer's status word: OK, CANCELLED, or an error class name
    (a typed error maps to its own code; anything else is INTERNAL)."""
    if status in ("OK", "CANCELLED"):
        return status
    return _error_codes().get(status, "INTERNAL")


@dataclass(frozen=True)
class ServedModel:
    """The labels every series of this pod carries."""

    engine_key: str = ""
    model: str = ""


class RequestRecord:
    """One Generate call's timestamps (monotonic seconds) and, when tracing, its span."""

    def __init__(self, observer: "RequestObserver", metadata):
        self._observer = observer
        self.started_s = time.monotonic()
        self.started_wall_s = time.time()
        self.first_token_s: float | None = None
        self.last_output_s: float | None = None
        self.span = observer.tracing.start_call("kiln.v1.Runtime/Generate", metadata,
                                                self.started_wall_s)

    def outputs(self, outputs) -> None:
        """Called with each batch of RequestOutputs the call receives."""
        now = time.monotonic()
        self.last_output_s = now
        if self.first_token_s is None and any(out.new_token_ids for out in outputs):
            self.first_token_s = now

    def wall(self, monotonic_s: float) -> float:
        return self.started_wall_s + (monotonic_s - self.started_s)

    def finish(self, status: str, assembler, request) -> None:
        """Ends the call: `assembler` is None when it never reached the engine, `request` the
        engine Request (or None) whose arrival and first scheduled step give the queue time."""
        self._observer.finish(self, status, assembler, request)


class RequestObserver:
    """Turns each finished RequestRecord into a log line, metrics and spans."""

    def __init__(self, metrics: RuntimeMetrics | None = None, tracing: Tracing = Tracing.off(),
                 served_model: Callable[[], ServedModel] = ServedModel):
        self.metrics = metrics
        self.tracing = tracing
        self.served_model = served_model

    def start(self, metadata=None) -> RequestRecord:
        return RequestRecord(self, metadata)

    def finish(self, record: RequestRecord, status: str, assembler, request) -> None:
        ended = time.monotonic()
        code = grpc_code(status)
        prompt = assembler.num_prompt_tokens if assembler is not None else 0
        output = assembler.num_output_tokens if assembler is not None else 0
        cached = assembler.cached_tokens if assembler is not None else 0
        reason = getattr(getattr(assembler, "finish_reason", None), "value", None) or ""
        ttft = (record.first_token_s - record.started_s
                if record.first_token_s is not None else None)
        scheduled = getattr(request, "first_scheduled_time", None)
        queue = scheduled - request.arrival_time if scheduled is not None else None
        first_output = getattr(request, "first_output_time", None)
        prefill = first_output - scheduled if None not in (first_output, scheduled) else None
        delivery = (record.first_token_s - first_output
                    if None not in (first_output, record.first_token_s) else None)
        tpot = None
        if record.first_token_s is not None and output > 1:
            tpot = (record.last_output_s - record.first_token_s) / (output - 1)
        duration = ended - record.started_s
        request_id = assembler.request_id if assembler is not None else \
            getattr(request, "request_id", "")
        log.info("generate", extra={"kiln": {
            "request_id": request_id, "status": code, "finish_reason": reason,
            "prompt_tokens": prompt, "output_tokens": output, "cached_tokens": cached,
            "ttft_s": _rounded(ttft), "queue_s": _rounded(queue),
            "prefill_s": _rounded(prefill), "delivery_s": _rounded(delivery),
            "duration_s": _rounded(duration), "started_unix_s": round(record.started_wall_s, 6)}})
        if self.metrics is not None:
            self._observe(code, reason, prompt, output, cached, ttft, tpot, queue, duration,
                          reached_engine=assembler is not None)
        if record.span is not None:
            self._trace(record, code, scheduled, ended, request_id, prompt, output, cached)

    def _observe(self, code, reason, prompt, output, cached, ttft, tpot, queue, duration,
                 reached_engine: bool) -> None:
        served = self.served_model()
        self.metrics.requests.labels(served.engine_key, served.model, code, reason).inc()
        if not reached_engine:
            return
        m = self.metrics.of(served.engine_key, served.model)
        m.prompt_tokens.inc(prompt)
        m.generation_tokens.inc(output)
        m.prefix_cached_tokens.inc(cached)
        m.prompt_length.observe(prompt)
        m.output_length.observe(output)
        m.e2e_latency.observe(duration)
        if ttft is not None:
            m.time_to_first_token.observe(ttft)
        if tpot is not None:
            m.time_per_output_token.observe(tpot)
        if queue is not None:
            m.queue_time.observe(queue)

    def _trace(self, record, code, scheduled, ended, request_id, prompt, output, cached) -> None:
        tracing, span = self.tracing, record.span
        first, last = record.first_token_s, record.last_output_s
        if scheduled is not None:
            tracing.phase(span, "queue", record.wall(record.started_s), record.wall(scheduled))
            tracing.phase(span, "prefill", record.wall(scheduled),
                          record.wall(first if first is not None else ended),
                          {"kiln.prompt_tokens": prompt, "kiln.cached_tokens": cached})
        if first is not None:
            tracing.phase(span, "decode", record.wall(first), record.wall(last),
                          {"kiln.output_tokens": output})
            tracing.phase(span, "stream", record.wall(first), record.wall(ended))
        served = self.served_model()
        tracing.end_call(span, record.wall(ended), code, {
            "kiln.request_id": request_id, "kiln.engine_key": served.engine_key,
            "kiln.model": served.model, "kiln.prompt_tokens": prompt,
            "kiln.output_tokens": output})


def _rounded(seconds: float | None) -> float | None:
    """To 10 us: the line is written once the call ends, so `started_unix_s` (when the handler
    began, on the host's wall clock) and these let a client on the same host split what it saw
    into its way to the handler, the pod's own TTFT, and the way back (bench/grpc_load.py)."""
    return None if seconds is None else round(seconds, 5)
