"""The capabilities GetServerInfo reports match what the loader really accepts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from runtime_service.server import capabilities
from runtime_service.format.engine_config import (KV_CACHE_DTYPES, QUANT_ALGOS, EngineConfig,
                                                  QuantConfig)
from runtime_service.model.llama import LlamaModel
from runtime_service.model.layers.quantized_linear import WeightQuant
from runtime_service.model.loader import load_model
from runtime_service.format.model_config import ModelArgs

ARGS = ModelArgs(vocab_size=64, hidden_size=64, intermediate_size=64, num_layers=1, num_heads=2,
                 num_kv_heads=1, head_dim=32)


WEIGHT_ALGOS = [a for a in capabilities.LOADABLE_QUANT_ALGOS if not a.startswith("kv_")]


def test_every_quantization_of_the_format_is_reported():
    assert set(WEIGHT_ALGOS) == set(QUANT_ALGOS)
    assert {f"kv_{d}" for d in KV_CACHE_DTYPES if d != "auto"} == \
        set(capabilities.LOADABLE_QUANT_ALGOS) - set(WEIGHT_ALGOS)


@pytest.mark.parametrize("algo", WEIGHT_ALGOS)
def test_every_reported_quant_algo_loads(algo, tmp_path):
    config = EngineConfig(model=ARGS, quant=QuantConfig(algo=algo, group_size=32))
    (tmp_path / "config.json").write_text(config.to_json())
    quant = WeightQuant.for_algo(algo, 32)
    tensors = {name: torch.zeros_like(param) for name, param in
               LlamaModel(ARGS, range(1), quant=quant).named_parameters()}
    save_file(tensors, str(tmp_path / "rank0.safetensors"))
    loaded = load_model(tmp_path).model
    layer = loaded.layers["0"].attn.qkv_proj
    assert (layer.quant is None) == (algo == "NONE")
