"""Faults on real pods, CPU ranks over gloo: a step that keeps failing ends every stream and
turns the pod NOT_SERVING; a rank that dies or raises mid-step ends the streams with
UNAVAILABLE within seconds and the pod exits (so the orchestrator restarts it)."""

from __future__ import annotations

import os
import signal
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.v1 import runtime_pb2
from runtime_service.model.faults import ENV
from runtime_service.server.servicer import LIVENESS_SERVICE_NAME
from support.kiln_servers import RuntimePod, build_engine, runtime_stub
from support.random_llama import make_random_llama

# The warm-up request takes the first two steps of every rank.
WARM_UP_STEPS = 2


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("hf") / "llama", num_hidden_layers=2)


@pytest.fixture(scope="module")
def tp2_engine(model, tmp_path_factory):
    return build_engine(model, tmp_path_factory.mktemp("store"), "--tp", "2",
                        "--max-batch-size", "4", "--max-seq-len", "512",
                        "--max-input-len", "64")["uri"]


def long_stream(stub, index: int = 0):
    request = runtime_pb2.GenerateRequest(
        token_ids=runtime_pb2.TokenIds(ids=[3 + index, 4, 5]), streaming=True,
        sampling=runtime_pb2.SamplingConfig(max_new_tokens=400, ignore_eos=True))
    return stub.Generate(request, timeout=60)


def ended_with(stream) -> grpc.StatusCode:
    try:
        for _ in stream:
            pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def health(channel, service: str = ""):
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_a_step_that_keeps_failing_turns_the_pod_not_serving(model, tmp_path):
    pod = RuntimePod(tmp_path, str(model), env={ENV: f"0:{WARM_UP_STEPS + 3}+"})
    try:
        pod.wait_serving()
        with grpc.insecure_channel(pod.address) as channel:
            stub = runtime_stub(channel)
            streams = [long_stream(stub, i) for i in range(3)]
            started = time.monotonic()
            assert [ended_with(s) for s in streams] == [grpc.StatusCode.UNAVAILABLE] * 3
            assert time.monotonic() - started < 5
            for attempt in range(3):
                ended_with(long_stream(stub, attempt))
            deadline = time.monotonic() + 10
            while health(channel) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert health(channel, LIVENESS_SERVICE_NAME) == \
                health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                list(long_stream(stub))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "engine failed" in info.value.details()
        assert pod.stop() == 0, pod.log()           # a failed pod still drains on SIGTERM
    finally:
        pod.stop()


def worker_ranks(pod: RuntimePod) -> list[psutil.Process]:
    return [p for p in psutil.Process(pod.process.pid).children(recursive=True)
            if "worker" in p.cmdline()]


@pytest.mark.parametrize("fault", ["sigkill", "raise"])
def test_a_rank_that_dies_or_raises_mid_step_ends_streams_and_the_pod_exits(
        fault, tp2_engine, tmp_path):
    env = {ENV: f"1:{WARM_UP_STEPS + 20}"} if fault == "raise" else {}
    pod = RuntimePod(tmp_path, tp2_engine, env=env)
    try:
        pod.wait_serving()
        ranks = worker_ranks(pod)
        assert len(ranks) == 1
        with grpc.insecure_channel(pod.address) as channel:
            stream = long_stream(runtime_stub(channel))
            for _, _ in zip(range(5), stream):
                pass                     # mid-stream
            if fault == "sigkill":
                os.kill(ranks[0].pid, signal.SIGKILL)
            started = time.monotonic()
            assert ended_with(stream) == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 10
        assert pod.process.wait(20) == 1, pod.log()
        gone, alive = psutil.wait_procs(ranks, timeout=10)
        assert not alive
    finally:
        pod.stop()
