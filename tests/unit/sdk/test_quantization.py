"""kiln.quantization against the HLAPI it reproduces: QuantMode's flags per algorithm, QuantAlgo
as a string enum, and QuantConfig's dict round trip and module exclusion."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given, strategies as st

from kiln.errors import FailedPrecondition, InvalidArgument
from kiln.quantization import QuantAlgo as A, QuantConfig, QuantMode as M

SQ = M.INT8_WEIGHTS | M.ACTIVATIONS
HLAPI_MODES = {   # tensorrt_llm.quantization.mode.QuantMode.from_quant_algo, FP8 aside
    A.W8A16: M.INT8_WEIGHTS,
    A.W4A16: M.INT4_WEIGHTS,
    A.W4A16_AWQ: M.INT4_WEIGHTS | M.PER_GROUP,
    A.W4A16_GPTQ: M.INT4_WEIGHTS | M.PER_GROUP,
    A.W4A8_AWQ: M.INT4_WEIGHTS | M.PER_GROUP,
    A.W8A8_SQ_PER_CHANNEL: SQ | M.PER_CHANNEL,
    A.W8A8_SQ_PER_TENSOR_PLUGIN: SQ,
    A.W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN: SQ | M.PER_CHANNEL | M.PER_TOKEN,
    A.W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN: SQ | M.PER_CHANNEL,
    A.W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN: SQ | M.PER_TOKEN,
}


@pytest.mark.parametrize("algo", list(HLAPI_MODES))
def test_quant_mode_of_each_algorithm_is_the_hlapis(algo):
    assert M.from_quant_algo(algo) == HLAPI_MODES[algo]
    assert QuantConfig(quant_algo=algo).quant_mode.has_any_quant()


def test_smooth_quant_plugin_modes_answer_as_smooth_quant():
    per_token = QuantConfig(quant_algo=A.W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN).quant_mode
    assert per_token.has_act_and_weight_quant() and per_token.has_per_token_dynamic_scaling()
    assert not per_token.has_per_channel_scaling()
    per_tensor = QuantConfig(quant_algo=A.W8A8_SQ_PER_CHANNEL).quant_mode
    assert per_tensor.has_per_channel_scaling() and per_tensor.has_act_static_scaling()


def test_w4a8_awq_mode_is_int4_weight_only_per_group():
    mode = M.from_quant_algo(A.W4A8_AWQ)
    assert mode.is_int4_weight_only_per_group() and not mode.has_fp8_qdq()


def test_fp8_mode_says_kiln_scales_per_channel_and_per_token_at_run_time():
    mode = M.from_quant_algo(A.FP8)
    assert mode == M.FP8_QDQ | M.PER_CHANNEL | M.PER_TOKEN
    assert mode.has_per_token_dynamic_scaling() and not mode.has_act_static_scaling()


def test_from_quant_algo_takes_string_values_as_the_hlapi_does():
    assert M.from_quant_algo("W4A16_AWQ", "INT8") == M.INT4_WEIGHTS | M.PER_GROUP | M.INT8_KV_CACHE
    assert M.from_quant_algo(None, "FP8") == M.FP8_KV_CACHE


def test_quant_algo_is_a_string_enum():
    assert str(A.FP8) == "FP8" and f"{A.W4A16_AWQ}" == "W4A16_AWQ"
    assert A.FP8 == "FP8" and "FP8" == A.FP8 and isinstance(A.FP8, str)
    assert {"FP8": 1}[A.FP8] == 1
    assert repr(A.FP8) == "<QuantAlgo.FP8: 'FP8'>"


@pytest.mark.parametrize("item, present", [
    ("FP8", True), (A.INT8, True), ("W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN", True),
    ("nope", False), ("fp8", False), ("", False), (None, False), (8, False), ([], False)])
def test_membership_asks_about_values(item, present):
    assert (item in A) is present


def test_quant_algo_survives_pickle_and_json():
    assert pickle.loads(pickle.dumps(A.W4A8_AWQ)) is A.W4A8_AWQ
    assert json.loads(json.dumps({"quant_algo": A.FP8})) == {"quant_algo": "FP8"}


def test_quant_config_still_takes_names_and_refuses_unknown_algorithms():
    assert QuantConfig(quant_algo="W4A16_AWQ").quant_algo is A.W4A16_AWQ
    with pytest.raises(InvalidArgument, match="QuantConfig.quant_algo"):
        QuantConfig(quant_algo="W3A2")


def test_to_dict_gives_every_field_with_copied_lists():
    config = QuantConfig(quant_algo=A.W4A16_AWQ, group_size=64, exclude_modules=["lm_head"])
    data = config.to_dict()
    assert data == config.asdict() and data["quant_algo"] is A.W4A16_AWQ
    data["exclude_modules"].append("*.mlp.*")
    assert config.exclude_modules == ["lm_head"]


@given(algo=st.sampled_from([None, *A]), kv=st.sampled_from([None, A.INT8, A.FP8]),
       group_size=st.sampled_from([32, 64, 128]),
       exclude=st.one_of(st.none(), st.lists(st.sampled_from(["lm_head", "*.mlp.*"]))),
       zero_point=st.booleans())
def test_from_dict_of_to_dict_is_the_same_config(algo, kv, group_size, exclude, zero_point):
    config = QuantConfig(quant_algo=algo, kv_cache_quant_algo=kv, group_size=group_size,
                         exclude_modules=exclude, has_zero_point=zero_point)
    assert QuantConfig.from_dict(config.to_dict()) == config
    assert QuantConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_from_dict_takes_string_algorithms_and_validates_them():
    config = QuantConfig.from_dict({"quant_algo": "W4A16_AWQ", "group_size": 64})
    assert config.quant_algo is A.W4A16_AWQ and config.group_size == 64
    with pytest.raises(InvalidArgument, match="group_size"):
        QuantConfig.from_dict({"group_size": 0})


def test_from_dict_refuses_unknown_keys_naming_them():
    with pytest.raises(InvalidArgument, match="'quantized_layers', 'bogus'"):
        QuantConfig.from_dict({"quant_algo": "FP8", "quantized_layers": {}, "bogus": 1})
    with pytest.raises(InvalidArgument, match="takes a dict"):
        QuantConfig.from_dict([("quant_algo", "FP8")])


def test_from_dict_takes_later_hlapi_rowwise_keys_only_at_their_defaults():
    config = QuantConfig.from_dict({"quant_algo": "FP8", "clamp_val": None,
                                    "use_meta_recipe": False})
    assert config == QuantConfig(quant_algo=A.FP8)
    with pytest.raises(FailedPrecondition, match="clamp_val"):
        QuantConfig.from_dict({"quant_algo": "FP8", "clamp_val": [-1200.0, 1200.0]})
    with pytest.raises(FailedPrecondition, match="use_meta_recipe"):
        QuantConfig.from_dict({"use_meta_recipe": True})


@pytest.mark.parametrize("name, excluded", [
    ("lm_head", True), ("model.layers.3.mlp.down_proj", True),
    ("model.layers.3.self_attn.q_proj", False), ("LM_HEAD", False), ("lm_head.weight", False)])
def test_excluded_modules_match_as_fnmatch_patterns(name, excluded):
    config = QuantConfig(quant_algo=A.W8A16, exclude_modules=["lm_head", "*.mlp.*"])
    assert config.is_module_excluded_from_quantization(name) is excluded


def test_nothing_is_excluded_without_exclude_modules():
    assert not QuantConfig(quant_algo=A.W8A16).is_module_excluded_from_quantization("lm_head")


def test_from_description_builds_the_described_flags():
    assert M.from_description() == M.NONE
    assert M.from_description(quantize_weights=True) == M.INT8_WEIGHTS
    assert M.from_description(True, True, per_token=True, use_int8_kv_cache=True) == \
        SQ | M.PER_TOKEN | M.INT8_KV_CACHE
    assert M.from_description(use_fp8_qdq=True, use_fp8_kv_cache=True) == \
        M.FP8_QDQ | M.FP8_KV_CACHE
    assert M.use_weight_only(use_int4_weights=True, per_group=True) == \
        M.from_quant_algo(A.W4A16_AWQ)
    assert M.use_smooth_quant(per_channel=True) == M.from_quant_algo(A.W8A8_SQ_PER_CHANNEL)


@pytest.mark.parametrize("description", [
    dict(quantize_activations=True), dict(quantize_weights=True, per_token=True),
    dict(per_channel=True)])
def test_from_description_refuses_what_the_hlapi_refuses(description):
    with pytest.raises(ValueError, match="from_description"):
        M.from_description(**description)


def test_act_or_weight_quant_and_set_fp8_qdq():
    assert M.INT4_WEIGHTS.has_act_or_weight_quant() and SQ.has_act_or_weight_quant()
    assert not (M.FP8_QDQ | M.INT8_KV_CACHE).has_act_or_weight_quant()
    assert M.NONE.set_fp8_qdq().has_fp8_qdq()
