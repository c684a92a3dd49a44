"""The capabilities GetServerInfo reports match what the loader really accepts."""

from __future__ import annotations

import pytest

from runtime_service.server import capabilities
from runtime_service.format.engine_config import QUANT_ALGOS, EngineConfig, QuantConfig
from runtime_service.errors import FailedPrecondition
from runtime_service.model.loader import load_model
from runtime_service.format.model_config import ModelArgs

ARGS = ModelArgs(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                 num_kv_heads=1, head_dim=8)


@pytest.mark.parametrize("algo", [a for a in QUANT_ALGOS if a not in capabilities.LOADABLE_QUANT_ALGOS])
def test_quant_algos_not_reported_are_refused_by_the_loader(algo, tmp_path):
    config = EngineConfig(model=ARGS, quant=QuantConfig(algo=algo))
    (tmp_path / "config.json").write_text(config.to_json())
    with pytest.raises(FailedPrecondition):
        load_model(tmp_path)
