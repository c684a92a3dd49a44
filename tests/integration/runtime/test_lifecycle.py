"""A pod's life: empty and NOT_SERVING until LoadEngine, the queue bound, unknown engines,
bearer tokens and TLS, and SIGTERM draining running streams before it exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.v1 import runtime_pb2
from support.kiln_servers import REPO, RuntimePod, runtime_stub


def long_request(n=1900, **kwargs):
    return runtime_pb2.GenerateRequest(
        token_ids=runtime_pb2.TokenIds(ids=[7, 8, 9]), streaming=True,
        sampling=runtime_pb2.SamplingConfig(max_new_tokens=n, ignore_eos=True), **kwargs)


def health(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                     timeout=5).status


def test_empty_pod_is_not_serving_until_load_engine(tiny_engine, tmp_path):
    pod = RuntimePod(tmp_path, "", "--allow-load-engine", "--kv-max-tokens", "4096")
    try:
        pod.wait_listening()
        with grpc.insecure_channel(pod.address) as channel:
            stub = runtime_stub(channel)
            assert health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            info = stub.GetServerInfo(runtime_pb2.GetServerInfoRequest(), timeout=5)
            assert info.state == runtime_pb2.SERVER_STATE_EMPTY and info.load_engine_enabled
            with pytest.raises(grpc.RpcError) as error:
                list(stub.Generate(long_request(2), timeout=5))
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.RpcError) as error:
                stub.LoadEngine(runtime_pb2.LoadEngineRequest(engine_uri=str(tmp_path / "none")),
                                timeout=60)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as error:
                stub.LoadEngine(runtime_pb2.LoadEngineRequest(
                    engine_uri=tiny_engine["uri"],
                    options=runtime_pb2.RuntimeOptions(sink_token_length=4)), timeout=60)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT   # sinks need a window
            model = stub.LoadEngine(runtime_pb2.LoadEngineRequest(
                engine_uri=tiny_engine["uri"],
                options=runtime_pb2.RuntimeOptions(kv_max_tokens=2048, max_new_tokens=100,
                                                   scheduler_policy="MAX_UTILIZATION")),
                timeout=120)
            assert model.engine.engine_key == tiny_engine["engine_key"]
            assert model.max_new_tokens == 100
            assert health(channel) == health_pb2.HealthCheckResponse.SERVING
            info = stub.GetServerInfo(runtime_pb2.GetServerInfoRequest(), timeout=5)
            assert info.kv_cache.num_total_blocks == 2048 // info.kv_cache.block_size
            assert info.scheduler_policy == "MAX_UTILIZATION"
            with pytest.raises(grpc.RpcError) as error:
                list(stub.Generate(long_request(101), timeout=5))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as error:
                stub.LoadEngine(runtime_pb2.LoadEngineRequest(engine_uri=tiny_engine["uri"]),
                                timeout=10)
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        pod.stop()


def test_unknown_engine_at_start_exits_with_not_found(tmp_path):
    done = subprocess.run([sys.executable, "-m", "runtime_service", "serve", "--listen",
                           "127.0.0.1:0", "--engine", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert "kiln-runtime: error: NOT_FOUND:" in done.stderr


def test_full_queue_is_resource_exhausted_and_sigterm_drains(tiny_engine, tmp_path):
    pod = RuntimePod(tmp_path, tiny_engine["uri"], "--max-queue-size", "2", "--grace-s", "60")
    pod.wait_serving()
    with grpc.insecure_channel(pod.address) as channel:
        stub = runtime_stub(channel)
        first = stub.Generate(long_request(400), timeout=120)
        second = stub.Generate(long_request(1900), timeout=120)
        assert next(first).HasField("chunk") and next(second).HasField("chunk")
        with pytest.raises(grpc.RpcError) as error:
            list(stub.Generate(long_request(2), timeout=10))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        second.cancel()
        pod.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while health(channel) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as error:
            list(stub.Generate(long_request(2), timeout=10))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        rest = list(first)                       # the running stream finishes normally
        assert rest[-1].complete.finish_reason == runtime_pb2.FINISH_REASON_LENGTH
        assert len(rest[-1].complete.token_ids) == 400
    assert pod.process.wait(30) == 0


def _self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return cert, key


def test_tls_and_bearer_token(tiny_engine, tmp_path):
    cert, key = _self_signed(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-some-length\n")
    pod = RuntimePod(tmp_path, tiny_engine["uri"], "--tls-cert", str(cert), "--tls-key", str(key),
                     "--token-file", str(token_file))
    try:
        pod.wait_listening()
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(pod.address, credentials) as channel:
            deadline = time.monotonic() + 120
            while health(channel) != health_pb2.HealthCheckResponse.SERVING:   # health is open
                assert time.monotonic() < deadline
                time.sleep(0.1)
            stub = runtime_stub(channel)
            with pytest.raises(grpc.RpcError) as error:
                stub.GetServerInfo(runtime_pb2.GetServerInfoRequest(), timeout=5)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as error:
                list(stub.Generate(long_request(2), timeout=5,
                                   metadata=(("authorization", "Bearer wrong"),)))
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", "Bearer s3cret-token-of-some-length"),)
            responses = list(stub.Generate(long_request(3), timeout=30, metadata=good))
            assert len(responses[-1].complete.token_ids) == 3
        with grpc.insecure_channel(pod.address) as plain:
            with pytest.raises(grpc.RpcError):
                health(plain)
    finally:
        pod.stop()
