"""The SDK end to end on its embedded default: builder and runtime processes over a store in a
per-session KILN_HOME. The SmolLM2 folder lives in the real Kiln home so it is made only once."""

from __future__ import annotations


import pytest

from support.kiln_servers import embedded_kiln_home, make_tiny_chat_llama, tiny_config


@pytest.fixture(scope="session", autouse=True)
def kiln_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("kiln-home")
    with embedded_kiln_home(home):
        yield home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_chat_llama(tmp_path_factory.getbasetemp() / "tiny-chat-llama")


@pytest.fixture(scope="module")
def llm(tiny_model):
    from kiln import LLM
    with LLM(tiny_config(tiny_model), show_progress=False) as llm:
        yield llm
