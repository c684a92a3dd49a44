"""One real Kiln (embedded builder and runtime processes, gRPC on loopback) for the compat tests
that generate, on a 2-layer random LLaMA carrying SmolLM2's tokenizer, built for 2 beams. Tests
share it and own their requests; none changes its settings."""

from __future__ import annotations


import pytest

from support.kiln_servers import embedded_kiln_home, make_tiny_chat_llama, tiny_config


@pytest.fixture(scope="session")
def compat_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("kiln-compat-home")
    with embedded_kiln_home(home):
        yield home


@pytest.fixture(scope="session")
def compat_model(tmp_path_factory):
    # the folder tests/e2e makes too: in one session it is written once
    return make_tiny_chat_llama(tmp_path_factory.getbasetemp() / "tiny-chat-llama")


@pytest.fixture(scope="session")
def llm(compat_home, compat_model):
    from kiln.hlapi import LLM
    config = tiny_config(compat_model, max_beam_width=2)
    config.build_config.dtype = "float32"      # compared with transformers in fp32, on any device
    with LLM(config, show_progress=False) as llm:
        yield llm


@pytest.fixture(scope="session")
def hf_model(compat_model):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(str(compat_model)).eval()
