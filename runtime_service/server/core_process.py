"""The engine core in its own process: `python -m runtime_service engine-core --fd N` (internal).

The pod (`--engine-core process`, server/core_client.py) starts it with one end of a socketpair
as fd N. It reads one START message, runs the pod's usual start-up (engine_start.start_engine:
fetch, load, capture, warm-up; ranks are started from here), says FETCHED with the tokenizer's
folder once the engine is local, answers STARTED with what the pod needs to know about the
engine, and then owns the Executor, unchanged: SUBMIT and ABORT go to it, and after each pass of
its step loop one STEP message carries every stream's new outputs and the stats. Its step loop
never shares a GIL with protobuf encoding or gRPC writes.

It stops on SHUTDOWN, or when the pod is gone (EOF on the socket, or its parent pid changed).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from runtime_service.engine import core_codec as codec
from runtime_service.engine.executor_options import ExecutorOptions
from runtime_service.engine.request import Request, RequestOutput
from runtime_service.errors import KilnError
from runtime_service.server.core_pipe import FramedSocket
from runtime_service.server.engine_host import RuntimeSettings
from runtime_service.server import kernel_cache
from runtime_service.server.engine_start import start_engine
from runtime_service.server.heap import set_start_up_heap_aside
from runtime_service.server.log_format import configure_logging
from runtime_service.server.startup_report import process_age_s

log = logging.getLogger("kiln.engine_core")

PARENT_POLL_S = 1.0


class _OutboxStream:
    """The executor's stream for one request, in the core: its outputs wait in the outbox."""

    def __init__(self, request_id: str, outbox: list):
        self.request_id = request_id
        self._outbox = outbox

    def _push(self, item: RequestOutput | BaseException) -> None:
        self._outbox.append((self.request_id, item))


class EngineCore:
    """Glues an Executor to the pipe. Its step-loop thread does both ends: it reads submit /
    abort / shutdown at the top of each loop pass (and waits on the pipe while idle), and sends
    one STEP message after each pass. A request read there is scheduled in the same pass, with
    no hand-off to another thread of this process."""

    def __init__(self, executor, pipe: FramedSocket):
        self.executor = executor
        self.pipe = pipe
        self._closed = False                          # SHUTDOWN read, or the pod is gone
        self._outbox: list = []
        self._unstamped: dict[str, Request] = {}    # submitted, first output's stamps not yet sent
        self._last_stats = None
        self._announced = False                       # STARTED sent
        executor.new_stream = lambda request_id, abort: _OutboxStream(request_id, self._outbox)
        executor.on_step_end = self.flush
        executor.on_failure = self._failed

    def announce(self, description: dict) -> None:
        """Sends STARTED. The step loop's idle passes call `flush` from the moment the hooks are
        set, and a STEP sent before STARTED failed the pod's start ("INTERNAL: o: s", seen once
        in forty starts); so nothing of the loop's goes out until STARTED has."""
        self.pipe.send(codec.STARTED, codec.dumps(description))
        self._announced = True

    def flush(self) -> None:
        """One STEP message with what this loop pass produced; nothing when nothing changed,
        and nothing before STARTED (`announce`)."""
        if not self._announced:
            return
        stats = self.executor.stats()
        if not self._outbox and stats == self._last_stats:
            return
        items, self._outbox[:] = list(self._outbox), []
        step = codec.StepMessage(stats=stats if stats != self._last_stats else None)
        for request_id, item in items:
            request = self._unstamped.pop(request_id, None)
            if request is not None and request.first_scheduled_time is not None:
                step.scheduled[request_id] = request.first_scheduled_time
            if request is not None and request.first_output_time is not None:
                step.first_output[request_id] = request.first_output_time
            if isinstance(item, BaseException):
                step.errors.append((request_id, item))
            else:
                step.outputs.append(item)
        self._last_stats = stats
        self.pipe.send(codec.STEP, codec.encode_step(step))

    def _failed(self, cause: BaseException) -> None:
        self.flush()
        self.pipe.send(codec.FAILED, codec.dumps(codec.encode_error(cause)))

    def serve(self) -> None:
        """Serves the pod until SHUTDOWN or EOF, then stops the executor. The step loop reads
        the pipe; if it gives up (the engine failed), this thread reads on, so aborts and late
        submits are still answered until the pod stops the core."""
        self.executor.use_input_source(self._read_waiting, self._wait_readable)
        self.executor.wait_stopped()
        while not self._closed:
            self._read_one()
        self.executor.shutdown()

    def _wait_readable(self, timeout_s: float) -> None:
        if not self._closed:
            self.pipe.readable(timeout_s)

    def _read_waiting(self) -> None:
        """Handles every message that has begun to arrive; never waits for one that has not."""
        while not self._closed and self.pipe.readable():
            self._read_one()

    def _read_one(self) -> None:
        try:
            kind, body = self.pipe.recv()
            if kind == codec.SUBMIT:
                self._submit(codec.decode_request(body))
            elif kind == codec.ABORT:
                self.executor.abort(body.decode())
            elif kind == codec.SHUTDOWN:
                self._stop()
        except (EOFError, OSError):
            log.warning("the pod closed the engine-core pipe; stopping")
            self._stop()
        except Exception:  # noqa: BLE001 - on the step loop's thread: a bad message ends the core
            log.exception("unreadable message from the pod; stopping")
            self._stop()

    def _stop(self) -> None:
        self._closed = True
        self.executor.request_stop()

    def _submit(self, request: Request) -> None:
        self._unstamped[request.request_id] = request
        try:
            # the pod validated it against these limits (core_client.EngineCoreClient.submit)
            self.executor.submit(request, validated=True)
        except KilnError as exc:
            # never admitted, so the step loop sends nothing else about it
            self._unstamped.pop(request.request_id, None)
            self.pipe.send(codec.STEP, codec.encode_step(
                codec.StepMessage(errors=[(request.request_id, exc)])))


def describe(started) -> dict:
    """What the pod's gRPC process needs to know about the started engine (STARTED's body)."""
    executor = started.executor
    tokenizer_dir = executor.loaded.tokenizer_dir if executor.tokenizer is not None else None
    return {
        "folder": str(started.folder), "kind": started.kind,
        "report": dataclasses.asdict(started.report),
        "config": executor.config.to_dict(),
        "build": dataclasses.asdict(executor.build),
        "limits": dataclasses.asdict(executor.limits),
        "block_size": executor.kv.block_size,
        "world_size": executor.config.mapping.world_size,
        "tokenizer_dir": str(tokenizer_dir) if tokenizer_dir is not None else None,
        "stats": codec.encode_stats(executor.stats()),
    }


def settings_from(data: dict) -> RuntimeSettings:
    """The pod's settings as far as start_engine reads them, from the START message."""
    return RuntimeSettings(cache_dir=Path(data["cache_dir"]),
                           executor=ExecutorOptions(**data["executor"]),
                           share_startup_cache=data["share_startup_cache"])


def _exit_when_orphaned(parent_pid: int) -> None:
    """The socket's EOF covers a pod that exits; this covers a core whose main thread is stuck."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime_service engine-core")
    parser.add_argument("--fd", type=int, required=True, help="this process's end of the pipe")
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the pod drains first, then stops the core
    threading.Thread(target=_exit_when_orphaned, args=(args.parent_pid,), daemon=True,
                     name="kiln-core-parent-watch").start()
    pipe = FramedSocket(socket.socket(fileno=args.fd))
    kind, body = pipe.recv()
    if kind != codec.START:
        raise SystemExit(f"engine-core: expected a start message, got {kind!r}")
    start = codec.loads(body)
    configure_logging(start["log_level"], start["log_format"])

    def fetched(tokenizer_dir) -> None:
        body = {"tokenizer_dir": str(tokenizer_dir) if tokenizer_dir is not None else None}
        pipe.send(codec.FETCHED, codec.dumps(body))

    try:
        started = start_engine(start["uri"], settings_from(start["settings"]),
                               start["pod_age_s"] + process_age_s(), on_fetched=fetched)
    except BaseException as exc:  # noqa: BLE001 - every start failure goes back to the pod
        log.exception("the engine core failed to start")
        pipe.send(codec.START_FAILED, codec.dumps(codec.encode_error(exc)))
        return 2
    core = EngineCore(started.executor, pipe)
    core.announce(describe(started))
    # After STARTED: the collection (0.1-0.2 s on the CI CPU) is then off the start's critical
    # path; a request that comes meanwhile waits on the pipe until serve() reads it.
    set_start_up_heap_aside("engine core")
    core.serve()
    kernel_cache.finish_sharing()
    return 0


def run(argv: list[str] | None = None) -> int:
    """main, then an exit that does not wait for threads the engine's libraries left running."""
    code = main(argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
