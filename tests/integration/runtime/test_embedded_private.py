"""The SDK's embedded runtime and builder are this session's alone: a unix socket in a private
folder and a per-session token, nothing on TCP, and an attach that checks the engine the
runtime reports (issue 15, defect 1: another local process could LoadEngine a crafted engine
into the embedded runtime first, and `LLM(...)` used it)."""

from __future__ import annotations

import stat

import psutil
import pytest

from kiln.attach import attach_runtime
from kiln.client import Endpoint, LoopThread, RuntimeClient
from kiln.embedded import start_builder, start_runtime
from kiln.errors import FailedPrecondition, Unauthenticated
from kiln.v1 import engine_pb2, runtime_pb2


@pytest.fixture
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


def listening_tcp_ports(pid: int) -> list:
    return [c.laddr for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN]


def test_the_embedded_runtime_answers_only_its_session(tmp_path, loop):
    process = start_runtime(tmp_path / "home", "cpu")
    try:
        address = process.wait_listening(120)
        assert address.startswith("unix:")
        folder = process.private.path
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(process.private.token_file.stat().st_mode) == 0o600
        assert listening_tcp_ports(process.process.pid) == []

        stranger = RuntimeClient(Endpoint(address), loop)
        with pytest.raises(Unauthenticated):
            stranger.load_engine(str(tmp_path / "crafted-engine"), runtime_pb2.RuntimeOptions())
        with pytest.raises(Unauthenticated):
            stranger.server_info()
        stranger.close()

        owner = RuntimeClient(Endpoint(address, process.token), loop)
        assert owner.server_info().state == runtime_pb2.SERVER_STATE_EMPTY
        owner.close()
    finally:
        process.stop()
    assert not folder.exists()


def test_the_embedded_builder_needs_the_session_token_too(tmp_path, loop):
    process = start_builder(tmp_path / "home", [])
    try:
        address = process.wait_listening(120)
        assert address.startswith("unix:")
        assert listening_tcp_ports(process.process.pid) == []
        from kiln.client import BuilderClient
        stranger = BuilderClient(Endpoint(address), loop)
        with pytest.raises(Unauthenticated):
            stranger.list_engines()
        stranger.close()
        owner = BuilderClient(Endpoint(address, process.token), loop)
        assert owner.list_engines() == []
        owner.close()
    finally:
        process.stop()


class LoadsAnotherEngine:
    """A runtime that, asked to load one engine, reports another."""

    def load_engine(self, uri, options):
        return runtime_pb2.ModelInfo(engine=engine_pb2.EngineRef(engine_key="e" * 64,
                                                                 uri="s3://evil/engines/x"))


def test_attach_refuses_a_runtime_that_reports_another_engine_after_loading():
    empty = runtime_pb2.ServerInfo(state=runtime_pb2.SERVER_STATE_EMPTY)
    with pytest.raises(FailedPrecondition, match="refusing"):
        attach_runtime(LoadsAnotherEngine(), empty, "s3://good/engines/" + "a" * 64, "a" * 64,
                       runtime_pb2.RuntimeOptions())
