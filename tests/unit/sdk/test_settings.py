"""The SDK's settings: mutable as the surface uses them, but every assignment is validated and a
misspelt field is an error, never a silently ignored setting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from kiln import (BuildConfig, CapacitySchedulerPolicy, KvCacheConfig, ModelConfig, SamplingConfig,
                  StreamingLLMParam)
from kiln.errors import FailedPrecondition, InvalidArgument
from kiln.quantization import QuantAlgo, QuantConfig
from kiln.v1 import runtime_pb2


def test_surface_assignments_work():
    config = ModelConfig(model_dir="/models/llama", max_beam_width=4)
    config.quant_config.quant_algo = QuantAlgo.W4A16_AWQ
    config.parallel_config.tp_size = 2
    config.parallel_config.pp_size = 4
    assert config.parallel_config.world_size == 8
    assert config.quant_config.builder_algo == "W4A16_AWQ"


@pytest.mark.parametrize("target, field, value", [
    ("parallel_config", "tp_size", 0), ("parallel_config", "pp_size", "2"),
    ("parallel_config", "auto_parallel", 1), ("build_config", "dtype", "int4"),
    ("build_config", "max_seq_len", -5), ("quant_config", "quant_algo", "W3A2"),
    ("quant_config", "group_size", 0), ("quant_config", "exclude_modules", "lm_head"),
    ("quant_config", "exclude_modules", ["model.layers.0 .mlp"]),
    ("quant_config", "exclude_modules", ["x" * 257]), ("quant_config", "exclude_modules", [""]),
    ("quant_config", "exclude_modules", ["a"] * 1025),
])
def test_bad_values_are_refused_naming_the_field(target, field, value):
    part = getattr(ModelConfig(model_dir="/m"), target)
    with pytest.raises(InvalidArgument, match=field):
        setattr(part, field, value)


def test_misspelt_fields_are_errors():
    config = ModelConfig(model_dir="/m")
    with pytest.raises(AttributeError):
        config.parallel_config.tp_szie = 2
    with pytest.raises(AttributeError):
        SamplingConfig().beam_widht = 4


def test_world_size_must_agree_unless_auto_parallel():
    parallel = ModelConfig(model_dir="/m").parallel_config
    parallel.tp_size = 2
    with pytest.raises(InvalidArgument):
        parallel.world_size = 4
    parallel.auto_parallel = True
    parallel.world_size = 4
    assert parallel.world_size == 4


def test_quant_algos_kiln_lacks_are_named():
    with pytest.raises(FailedPrecondition, match="W4A16, W4A16_AWQ, W8A16, FP8"):
        QuantConfig(quant_algo=QuantAlgo.W8A8_SQ_PER_CHANNEL).builder_algo
    assert QuantConfig(kv_cache_quant_algo=QuantAlgo.INT8).builder_kv_cache_dtype == "int8"


def test_runtime_settings_validate():
    KvCacheConfig(max_new_tokens=128, free_gpu_memory_fraction=0.8)
    with pytest.raises(InvalidArgument):
        KvCacheConfig(free_gpu_memory_fraction=1.5)
    with pytest.raises(InvalidArgument):
        StreamingLLMParam(max_attention_window_size=0)
    assert CapacitySchedulerPolicy("MAX_UTILIZATION") is CapacitySchedulerPolicy.MAX_UTILIZATION
    with pytest.raises(InvalidArgument):
        BuildConfig(max_batch_size=True)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_temperature_accepts_exactly_0_to_100(value):
    config = SamplingConfig()
    if not math.isnan(value) and 0.0 <= value <= 100.0:
        config.temperature = value
        assert config.temperature == value
    else:
        with pytest.raises(InvalidArgument):
            config.temperature = value


def test_sampling_config_to_proto_keeps_every_field():
    config = SamplingConfig(max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.9,
                            random_seed=11, end_id=-1, beam_width=2, return_log_probs=True,
                            stop_words=["\n\n", [5, 6]], bad_words=["bad"])
    message, stops, bads = config.to_proto()
    assert (message.max_new_tokens, message.top_k, message.seed, message.end_id,
            message.beam_width) == (7, 3, 11, -1, 2)
    assert math.isclose(message.top_p, 0.9, rel_tol=1e-6)
    assert stops[0].text == "\n\n" and list(stops[1].token_ids.ids) == [5, 6]
    _, stops, bads = config.to_proto(encode=lambda word: [len(word)])
    assert list(stops[0].token_ids.ids) == [2] and list(bads[0].token_ids.ids) == [3]
    assert isinstance(message, runtime_pb2.SamplingConfig)


@pytest.mark.parametrize("words", ["a string", [""], [[]], [[-1]], [1.5], ["w"] * 65])
def test_bad_stop_words_are_refused(words):
    with pytest.raises(InvalidArgument):
        SamplingConfig(stop_words=words)
