"""Quantization Kiln never builds is refused by LLM(...) before any service starts (it was
refused only by the build, after the builder and runtime processes had started)."""

from __future__ import annotations

import pytest

import kiln.llm
from kiln import LLM
from kiln.errors import FailedPrecondition
from kiln.model_config import ModelConfig
from kiln.quantization import QuantAlgo


@pytest.fixture
def no_services(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a service was started")
    monkeypatch.setattr(kiln.llm, "start_services", refuse)


@pytest.mark.parametrize("field, algo, words", [
    ("kv_cache_quant_algo", QuantAlgo.W8A16, "kv_cache_quant_algo W8A16 is not built by Kiln"),
    ("quant_algo", QuantAlgo.W4A8_AWQ, "W4A8_AWQ"),
    ("quant_algo", QuantAlgo.W8A8_SQ_PER_CHANNEL, "W8A8_SQ_PER_CHANNEL")])
def test_an_algorithm_kiln_does_not_build_is_refused_before_any_service_starts(
        tmp_path, no_services, field, algo, words):
    config = ModelConfig(model_dir=str(tmp_path))
    setattr(config.quant_config, field, algo)
    with pytest.raises(FailedPrecondition, match=words):
        LLM(config, show_progress=False)


def test_smoothquant_is_refused_before_any_service_starts(tmp_path, no_services):
    config = ModelConfig(model_dir=str(tmp_path))
    config.quant_config.quant_algo = QuantAlgo.W8A16
    config.quant_config.smoothquant_val = 0.5
    with pytest.raises(FailedPrecondition, match="smoothquant_val is not available"):
        LLM(config, show_progress=False)
