"""One tiny engine per session and one runtime pod per module, all on loopback."""

from __future__ import annotations

import grpc
import pytest

from support.kiln_servers import RuntimePod, build_engine, make_tiny_chat_llama, runtime_stub


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_chat_llama(tmp_path_factory.getbasetemp() / "tiny-chat-llama")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    return build_engine(tiny_model, store, "--max-seq-len", "2048", "--max-input-len", "256",
                        "--max-batch-size", "16")


@pytest.fixture(scope="module")
def pod(tiny_engine, tmp_path_factory):
    pod = RuntimePod(tmp_path_factory.mktemp("pod"), tiny_engine["uri"])
    pod.wait_serving()
    yield pod
    pod.stop()


@pytest.fixture
def stub(pod):
    with grpc.insecure_channel(pod.address) as channel:
        yield runtime_stub(channel)
