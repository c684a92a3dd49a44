"""The capabilities GetServerInfo reports match what the loader really accepts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from runtime_service.server import capabilities
from runtime_service.format.engine_config import QUANT_ALGOS, EngineConfig, QuantConfig
from runtime_service.model.llama import LlamaModel
from runtime_service.model.layers.quantized_linear import WeightQuant
from runtime_service.model.loader import load_model
from runtime_service.format.model_config import ModelArgs

ARGS = ModelArgs(vocab_size=64, hidden_size=64, intermediate_size=64, num_layers=1, num_heads=2,
                 num_kv_heads=1, head_dim=32)


def test_every_quant_algo_of_the_format_is_reported():
    assert set(capabilities.LOADABLE_QUANT_ALGOS) == set(QUANT_ALGOS)


@pytest.mark.parametrize("algo", capabilities.LOADABLE_QUANT_ALGOS)
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
