"""The pod's side of `--engine-core process`: the engine core runs in a child process.

`start_core_process` spawns `python -m runtime_service engine-core` (server/core_process.py)
with one end of a socketpair, sends it the engine URI and settings, and waits for its start-up to
finish there. It returns an `EngineCoreClient`, which the server uses exactly as it uses an
Executor: `submit` validates at once and returns a RequestStream, `abort`, `stats`, `shutdown`,
`on_failure`, `tokenizer`, `config`, `build`, `limits`, `kv.block_size`, `ranks`.

One request's path: submit sends SUBMIT -> the core's Executor steps it -> the core sends one
STEP message per pass of its step loop -> the reader thread here posts each output to its
RequestStream (through the event loop's mailbox: one wakeup per step burst) -> the servicer.

If the core process dies, every live stream ends with UNAVAILABLE and `on_failure` fires; the
pod then drains and exits 1 (`process_lost`), as for a split engine that lost a rank.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from runtime_service.engine import core_codec as codec
from runtime_service.engine.executor_options import ExecutorOptions, ExecutorStats
from runtime_service.engine.request import Request
from runtime_service.engine.request_stream import RequestStream
from runtime_service.engine.tokenizer_load import (import_in_background, load_in_background,
                                                   load_tokenizer)
from runtime_service.engine.validation import EngineLimits, validate_request
from runtime_service.errors import CapacityExceeded, InvalidRequest, KilnError, Unavailable
from runtime_service.format.engine_config import BuildConfig, EngineConfig
from runtime_service.server.core_pipe import FramedSocket
from runtime_service.server.engine_start import StartedEngine
from runtime_service.server.log_format import active_log_format
from runtime_service.server.startup_report import StartupReport

log = logging.getLogger("kiln.runtime")

SHUTDOWN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class KVShape:
    """What the server reads of the core's KV cache besides its stats."""

    block_size: int


@dataclass(frozen=True)
class CoreRanks:
    """An engine split over ranks (started by the core): the server only asks whether it is."""

    world_size: int


class EngineCoreClient:
    """An Executor's surface for the server, over the pipe to the engine-core process."""

    def __init__(self, process: subprocess.Popen, pipe: FramedSocket, started: dict,
                 options: ExecutorOptions, tokenizer_load: Future | None = None):
        """`tokenizer_load`: the pod's tokenizer, loading since the core said FETCHED; without
        it the tokenizer loads here, from STARTED's folder."""
        self.process = process
        self.pipe = pipe
        self.options = options
        self.policy = options.policy
        self.config = EngineConfig.from_dict(started["config"])
        self.build = BuildConfig(**started["build"])
        self.limits = EngineLimits(**started["limits"])
        self.kv = KVShape(started["block_size"])
        self.ranks = CoreRanks(started["world_size"]) if started["world_size"] > 1 else None
        waiting = time.perf_counter()
        self.tokenizer = (tokenizer_load.result() if tokenizer_load is not None
                          else load_tokenizer(started["tokenizer_dir"]))
        waited_s = time.perf_counter() - waiting
        if waited_s > 0.01:             # the start's phases end at STARTED: this came after
            log.info("the pod waited %.2f s for its tokenizer after the core started", waited_s)
        self.on_failure = lambda exc: None            # called once, from the reader thread
        self.failure: BaseException | None = None
        self.process_lost = False                     # the core process died: exit the pod
        self._stats = codec.decode_stats(started["stats"])
        self._streams: dict[str, RequestStream] = {}
        self._requests: dict[str, Request] = {}
        self._lock = threading.Lock()
        self._stopping = False
        # The event loop never blocks on the pipe (a core that stopped reading would otherwise
        # freeze health checks too). A message goes out at once when nothing waits ahead of it
        # and the socket takes it whole; else it, or its rest, waits for the writer thread, and
        # so does every message after it until the writer has caught up (`_queued`).
        self._order = threading.Lock()
        self._queued = 0
        self._outgoing: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="kiln-core-writer", daemon=True)
        self._writer.start()
        self._reader = threading.Thread(target=self._read, name="kiln-core-reader", daemon=True)
        self._reader.start()

    # ---- what the server calls (event loop) ----------------------------------------------

    def submit(self, request: Request) -> RequestStream:
        validate_request(request, self.limits)
        stream = RequestStream(request.request_id, self.abort)
        with self._lock:
            if self._stopping:
                raise Unavailable("the executor is shutting down")
            if self.failure is not None:
                raise Unavailable(f"the engine failed ({self.failure}); retry on another replica")
            if request.request_id in self._streams:
                raise InvalidRequest(f"request_id {request.request_id!r} is already running")
            if len(self._streams) >= self.options.max_queue_size:
                raise CapacityExceeded(
                    f"the queue is full ({self.options.max_queue_size} requests); retry later")
            # inside the lock, so a failure that ends every stream sees this one too, and a
            # submit is queued before any abort of it
            self._streams[request.request_id] = stream
            self._requests[request.request_id] = request
            self._send(codec.SUBMIT, codec.encode_request(request))
        return stream

    def abort(self, request_id: str) -> bool:
        """Asks the core to drop the request at its next step boundary; True if it was live."""
        known = request_id in self._streams and self.failure is None
        if known:
            self._send(codec.ABORT, request_id.encode())
        return known

    def stats(self) -> ExecutorStats:
        """The core's latest stats (sent with its step messages), so a scrape never waits on the
        pipe. Live requests are counted here: submitted and not yet ended, as the executor
        counts them; with the core's step counter that lets the liveness watchdog see a core
        that stopped stepping."""
        return dataclasses.replace(self._stats, num_live_requests=len(self._streams))

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stops the core (its executor aborts what is left) and waits for the process."""
        with self._lock:
            self._stopping = True
        self._send(codec.SHUTDOWN)
        self._outgoing.put(None)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("the engine core did not stop within %.0f s; killing it", timeout_s)
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout_s)
        self._writer.join(timeout_s)
        self.pipe.close()

    # ---- sending: at once, else on the writer thread ---------------------------------------

    def _send(self, kind: bytes, body: bytes = b"") -> None:
        """Sends from the calling thread when it can without waiting (a request's way to its
        first token then wakes no writer thread), else queues the frame's rest, in order."""
        frame = self.pipe.frame(kind, body)
        with self._order:
            if self._queued == 0:
                try:
                    sent = self.pipe.send_nowait(frame)
                except OSError:
                    return      # the core is gone; the reader ends every stream
                if sent == len(frame):
                    return
                frame = frame[sent:]
            self._queued += 1
            self._outgoing.put(frame)

    def _write(self) -> None:
        while (frame := self._outgoing.get()) is not None:
            try:
                self.pipe.send_bytes(frame)
            except OSError:
                return          # the core is gone; the reader ends every stream
            with self._order:
                self._queued -= 1

    # ---- the reader thread ---------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                kind, body = self.pipe.recv()
                if kind == codec.STEP:
                    self._deliver(codec.decode_step(body))
                elif kind == codec.FAILED:
                    cause = codec.decode_error(codec.loads(body))
                    self._fail_all(Unavailable(f"the engine failed ({cause}); retry"), cause)
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a message this side cannot read ends the core
            log.exception("unreadable message from the engine core; stopping it")
            self.process.kill()
        if self._stopping:
            return
        try:
            code = self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process_lost = True
        log.error("the engine core process exited (code %s)", code)
        error = Unavailable(f"the engine core process exited (code {code}); retry on another "
                            "replica")
        self._fail_all(error, error)

    def _deliver(self, step: codec.StepMessage) -> None:
        for request_id, scheduled in step.scheduled.items():
            request = self._requests.get(request_id)
            if request is not None:
                request.first_scheduled_time = scheduled
        for request_id, first_output in step.first_output.items():
            request = self._requests.get(request_id)
            if request is not None:
                request.first_output_time = first_output
        if step.stats is not None:
            self._stats = step.stats
        for output in step.outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                self._forget(output.request_id)
            stream._push(output)
        for request_id, error in step.errors:
            stream = self._streams.get(request_id)
            if stream is not None:
                self._forget(request_id)
                stream._push(error)

    def _forget(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._requests.pop(request_id, None)

    def _fail_all(self, error: KilnError, cause: BaseException) -> None:
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = cause
            streams = list(self._streams.values())
            self._streams.clear()
            self._requests.clear()
        for stream in streams:
            stream._push(error)
        if first:
            self.on_failure(cause)


def _child_env() -> dict:
    """The pod's environment, with the folders that hold runtime_service and kiln on the path.

    A pod started by a launcher (mpiexec, srun, LeaderWorkerSet) passes on the rendezvous
    address it resolved: under MPI without MASTER_ADDR that took a broadcast every rank joined
    once, which the core, a new process, cannot join again."""
    import kiln
    import runtime_service
    from runtime_service.distributed.rank_layout import launch_layout
    roots = [str(Path(runtime_service.__file__).resolve().parents[1]),
             str(Path(kiln.__file__).resolve().parents[1])]
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*roots, *([path] if path else [])])}
    layout = launch_layout()
    if layout.launched:
        env |= {"MASTER_ADDR": layout.master_addr, "MASTER_PORT": str(layout.master_port)}
    return env


def start_message(uri: str, settings, pod_age_s: float) -> bytes:
    options = settings.executor or ExecutorOptions()
    executor = {**dataclasses.asdict(options), "policy": options.policy.value}
    return codec.dumps({
        "uri": uri, "pod_age_s": pod_age_s,
        "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        "log_format": active_log_format(),
        "settings": {"cache_dir": str(settings.cache_dir), "executor": executor,
                     "share_startup_cache": settings.share_startup_cache}})


def wait_for_start(pipe: FramedSocket) -> tuple[bytes, bytes, Future | None]:
    """The core's answer to START (STARTED or START_FAILED, and its body), and the pod's
    tokenizer: loading since the core said FETCHED, while the core went on loading and
    capturing for seconds (engine/tokenizer_load.py); None if it never said so."""
    tokenizer_load = None
    kind, body = pipe.recv()
    if kind == codec.FETCHED:
        tokenizer_load = load_in_background(codec.loads(body)["tokenizer_dir"])
        kind, body = pipe.recv()
    return kind, body, tokenizer_load


def start_core_process(uri: str, settings, pod_age_s: float = 0.0) -> StartedEngine:
    """engine_start.start_engine, run in a new engine-core process; blocks until it served its
    warm-up. A start that fails there raises the same typed error here."""
    import_in_background()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime_service", "engine-core", "--fd", str(theirs.fileno()),
             "--parent-pid", str(os.getpid())],
            pass_fds=(theirs.fileno(),), env=_child_env())
    finally:
        theirs.close()
    pipe = FramedSocket(ours)
    log.info("engine core process %d starting", process.pid)
    try:
        pipe.send(codec.START, start_message(uri, settings, pod_age_s))
        kind, body, tokenizer_load = wait_for_start(pipe)
    except (EOFError, OSError) as exc:
        pipe.close()
        code = process.wait()
        raise Unavailable(f"the engine core process exited while starting (code {code})") from exc
    if kind != codec.STARTED:
        pipe.close()
        process.wait(SHUTDOWN_TIMEOUT_S)
        if kind not in (codec.START_FAILED, codec.FAILED):
            raise KilnError(f"the engine core sent a {kind!r} message before it started")
        raise codec.decode_error(codec.loads(body))
    started = codec.loads(body)
    client = EngineCoreClient(process, pipe, started, settings.executor or ExecutorOptions(),
                              tokenizer_load)
    facts = dict(started["report"])
    report = StartupReport(tuple((name, s) for name, s in facts.pop("seconds")), **facts)
    return StartedEngine(client, Path(started["folder"]), started["kind"], report)
