"""A saved engine is served as it was built: a quant_config asking for another weight or KV cache
quantization is refused before any service starts, never silently ignored (it served the built
W8A16 engine while `llm.config` said FP8); unset fields ask for nothing."""

from __future__ import annotations

import json

import pytest

from kiln.engine_build import check_saved_engine_quant
from kiln.errors import InvalidArgument
from kiln.model_config import ModelConfig
from kiln.quantization import QuantAlgo


def saved_engine(tmp_path, algo="W8A16", kv="auto") -> ModelConfig:
    folder = tmp_path / "engine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "format": "kiln-engine", "model": {}, "mapping": {"tp_size": 1, "pp_size": 1},
        "quant": {"algo": algo, "group_size": 128, "kv_cache_dtype": kv}}))
    (folder / "manifest.json").write_text(json.dumps({"engine_key": "k" * 64, "files": []}))
    return ModelConfig(model_dir=str(folder))


@pytest.mark.parametrize("quant_algo, kv, message", [
    (QuantAlgo.FP8, None, "quant_algo is FP8 but the engine .* was built with W8A16"),
    (None, QuantAlgo.FP8, "kv_cache_quant_algo is FP8 but the engine .* was built with auto"),
    (QuantAlgo.W4A16_AWQ, QuantAlgo.INT8, "quant_algo is W4A16_AWQ")])
def test_another_quantization_than_the_engines_is_refused(tmp_path, quant_algo, kv, message):
    config = saved_engine(tmp_path)
    config.quant_config.quant_algo = quant_algo
    config.quant_config.kv_cache_quant_algo = kv
    with pytest.raises(InvalidArgument, match=message):
        check_saved_engine_quant(config)


@pytest.mark.parametrize("quant_algo, kv", [(None, None), (QuantAlgo.W8A16, None),
                                            (QuantAlgo.W8A16, QuantAlgo.INT8), (None, QuantAlgo.INT8)])
def test_the_engines_own_quantization_or_none_is_served(tmp_path, quant_algo, kv):
    config = saved_engine(tmp_path, kv="int8")
    config.quant_config.quant_algo = quant_algo
    config.quant_config.kv_cache_quant_algo = kv
    check_saved_engine_quant(config)


def test_an_unquantized_engine_refuses_a_weight_algorithm(tmp_path):
    config = saved_engine(tmp_path, algo="NONE")
    config.quant_config.quant_algo = QuantAlgo.W8A16
    with pytest.raises(InvalidArgument, match="built with NONE"):
        check_saved_engine_quant(config)
