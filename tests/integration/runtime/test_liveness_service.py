"""The liveness health service: SERVING while the pod is empty, serving and draining; NOT_SERVING
while the step loop has work and makes no steps, and SERVING again once steps resume."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.v1 import runtime_pb2
from runtime_service.server.engine_host import RuntimeSettings
from runtime_service.engine.executor import ExecutorOptions
from runtime_service.server.serve import RuntimeServer
from runtime_service.server.servicer import LIVENESS_SERVICE_NAME, SERVICE_NAME
from support.kiln_servers import REPO, RuntimePod, runtime_stub

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(channel, service: str, status: int, timeout_s: float) -> float:
    """Seconds until `service` reports `status`; fails after timeout_s."""
    started = time.monotonic()
    while check(channel, service) != status:
        assert time.monotonic() - started < timeout_s, f"{service} not {status} in {timeout_s}s"
        time.sleep(0.02)
    return time.monotonic() - started


def request(max_new_tokens: int) -> runtime_pb2.GenerateRequest:
    return runtime_pb2.GenerateRequest(
        token_ids=runtime_pb2.TokenIds(ids=[7, 8, 9]), streaming=True,
        sampling=runtime_pb2.SamplingConfig(max_new_tokens=max_new_tokens, ignore_eos=True))


def test_a_serving_pod_is_live(pod):
    with grpc.insecure_channel(pod.address) as channel:
        assert check(channel, LIVENESS_SERVICE_NAME) == SERVING
        responses = list(runtime_stub(channel).Generate(request(8), timeout=60))
        assert len(responses[-1].complete.token_ids) == 8
        assert check(channel, LIVENESS_SERVICE_NAME) == SERVING


def test_liveness_is_serving_while_empty_and_while_draining(tiny_engine, tmp_path):
    pod = RuntimePod(tmp_path, "", "--allow-load-engine", "--kv-max-tokens", "4096",
                     "--grace-s", "60")
    try:
        pod.wait_listening()
        with grpc.insecure_channel(pod.address) as channel:
            assert check(channel, SERVICE_NAME) == NOT_SERVING
            assert check(channel, LIVENESS_SERVICE_NAME) == SERVING
            stub = runtime_stub(channel)
            stub.LoadEngine(runtime_pb2.LoadEngineRequest(engine_uri=tiny_engine["uri"]),
                            timeout=120)
            running = stub.Generate(request(400), timeout=120)
            assert next(running).HasField("chunk")
            pod.process.send_signal(signal.SIGTERM)
            wait_for(channel, SERVICE_NAME, NOT_SERVING, timeout_s=10)
            assert check(channel, LIVENESS_SERVICE_NAME) == SERVING
            assert list(running)[-1].complete.finish_reason == runtime_pb2.FINISH_REASON_LENGTH
        assert pod.process.wait(30) == 0
    finally:
        pod.stop()


def test_a_step_stall_timeout_that_is_not_positive_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "runtime_service", "serve", "--listen",
                           "127.0.0.1:0", "--step-stall-timeout-s", "0"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert "INVALID_ARGUMENT" in done.stderr and "step_stall_timeout_s" in done.stderr


class InProcessRuntime:
    """A RuntimeServer on its own event loop thread, so the test can reach into its executor."""

    def __init__(self, settings: RuntimeSettings):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runtime = self.call(self._make(settings))
        self.port = self.call(self.runtime.start("127.0.0.1:0"))
        self.address = f"127.0.0.1:{self.port}"

    @staticmethod
    async def _make(settings):
        return RuntimeServer(settings)        # grpc.aio binds the server to the running loop

    def call(self, coroutine, timeout_s: float = 180):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.call(self.runtime.drain_and_stop(), timeout_s=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


STALL_TIMEOUT_S = 1.0


@pytest.fixture
def in_process(tiny_engine, tmp_path):
    # The thread core: the test hangs the Executor's own step in this process (the process
    # core's stall is tested in test_engine_core_process.py).
    settings = RuntimeSettings(cache_dir=tmp_path / "cache", grace_s=5,
                               executor=ExecutorOptions(kv_max_tokens=4096),
                               step_stall_timeout_s=STALL_TIMEOUT_S, engine_core="thread")
    server = InProcessRuntime(settings)
    server.call(server.runtime.host.load(tiny_engine["uri"]))
    yield server
    server.close()


def test_a_hung_step_loop_turns_liveness_off_until_steps_resume(in_process, monkeypatch,
                                                                 caplog):
    caplog.set_level(logging.INFO, logger="kiln.runtime")
    executor = in_process.runtime.host.executor
    step, release = executor.step, threading.Event()

    def hung_step():
        release.wait()
        step()

    monkeypatch.setattr(executor, "step", hung_step)
    poll_s = in_process.runtime.watchdog.poll_interval_s
    with grpc.insecure_channel(in_process.address) as channel:
        assert check(channel, LIVENESS_SERVICE_NAME) == SERVING
        stream = runtime_stub(channel).Generate(request(4), timeout=60)
        stalled_after_s = wait_for(channel, LIVENESS_SERVICE_NAME, NOT_SERVING,
                                   timeout_s=STALL_TIMEOUT_S + poll_s + 1.0)
        assert stalled_after_s >= STALL_TIMEOUT_S - poll_s
        assert check(channel, SERVICE_NAME) == SERVING         # readiness cannot see the hang
        release.set()
        wait_for(channel, LIVENESS_SERVICE_NAME, SERVING, timeout_s=poll_s + 1.0)
        assert len(list(stream)[-1].complete.token_ids) == 4
        assert check(channel, LIVENESS_SERVICE_NAME) == SERVING
    flips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("liveness ")]
    assert len(flips) == 2
    assert f"service={LIVENESS_SERVICE_NAME} status=NOT_SERVING" in flips[0]
    assert "status=SERVING" in flips[1]
