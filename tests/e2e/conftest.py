"""The SDK end to end on its embedded default: builder and runtime processes over a store in a
per-session KILN_HOME. The SmolLM2 folder lives in the real Kiln home so it is made only once."""

from __future__ import annotations

import os

import pytest

from support.kiln_servers import make_tiny_chat_llama, tiny_config


@pytest.fixture(scope="session", autouse=True)
def kiln_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("kiln-home")
    saved = {name: os.environ.pop(name, None) for name in ("KILN_BUILDER", "KILN_RUNTIME")}
    previous = os.environ.get("KILN_HOME")
    os.environ["KILN_HOME"] = str(home)
    yield home
    os.environ.pop("KILN_HOME")
    if previous is not None:
        os.environ["KILN_HOME"] = previous
    for name, value in saved.items():
        if value is not None:
            os.environ[name] = value


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_chat_llama(tmp_path_factory.getbasetemp() / "tiny-chat-llama")


@pytest.fixture(scope="module")
def llm(tiny_model):
    from kiln import LLM
    with LLM(tiny_config(tiny_model), show_progress=False) as llm:
        yield llm
