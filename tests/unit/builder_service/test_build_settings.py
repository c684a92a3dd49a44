import pytest

from builder_service.settings import BuildSpec
from runtime_service.format.engine_config import Mapping, QuantConfig, Target
from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.format.model_config import ModelArgs, RopeScaling

MODEL = ModelArgs(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=256)


def test_unset_limits_take_defaults_that_fit_the_model():
    build = BuildSpec(source="/m").build_config(MODEL)
    assert build.max_seq_len == 256 and build.max_input_len == 256
    assert build.max_batch_size == 64 and build.max_beam_width == 1
    assert build.max_num_tokens >= build.max_input_len


def test_max_seq_len_beyond_the_model_is_refused_naming_the_field():
    with pytest.raises(InvalidRequest, match="max_seq_len=512"):
        BuildSpec(source="/m", max_seq_len=512).build_config(MODEL)


def test_linear_rope_scaling_extends_the_allowed_length():
    scaled = ModelArgs(**{**MODEL.__dict__, "rope_scaling": RopeScaling("linear", factor=4.0)})
    assert BuildSpec(source="/m", max_seq_len=1024).build_config(scaled).max_seq_len == 1024
    with pytest.raises(InvalidRequest):
        BuildSpec(source="/m", max_seq_len=1025).build_config(scaled)


def test_input_longer_than_sequence_is_refused():
    with pytest.raises(InvalidRequest, match="max_input_len"):
        BuildSpec(source="/m", max_input_len=200, max_seq_len=100).build_config(MODEL)


@pytest.mark.parametrize("algo", ["W4A8_AWQ", "W4A16_GPTQ", "W8A8_SQ_PER_CHANNEL", "INT8"])
def test_quant_algos_kiln_does_not_build_are_a_failed_precondition_naming_those_it_does(algo):
    with pytest.raises(FailedPrecondition, match="builds NONE, W4A16, W4A16_AWQ, W8A16, FP8"):
        BuildSpec(source="/m", quant=QuantConfig(algo=algo))


@pytest.mark.parametrize("algo", ["W4A16", "W4A16_AWQ", "W8A16", "FP8"])
def test_quantized_builds_are_accepted(algo):
    assert BuildSpec(source="/m", quant=QuantConfig(algo=algo, group_size=64)).quant.algo == algo


def test_group_size_that_does_not_divide_a_width_names_the_widths_and_the_sizes_that_work():
    smollm2 = ModelArgs(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                        num_heads=9, num_kv_heads=3, head_dim=64, max_position_embeddings=8192)
    with pytest.raises(InvalidRequest) as info:
        QuantConfig(algo="W4A16_AWQ", group_size=128).check_fits(smollm2)
    message = str(info.value)
    assert "group_size 128" in message and "qkv_proj/gate_up_proj 576" in message
    assert "o_proj 576" in message and "down_proj 1536" in message
    assert "group sizes that work: 64, 32" in message
    QuantConfig(algo="W4A16_AWQ", group_size=64).check_fits(smollm2)
    QuantConfig(algo="W8A16", group_size=128).check_fits(smollm2)   # per channel: no groups
    # only quantized linears need whole groups: down_proj alone (1536 wide) takes 128
    kept = ("*attn*", "*gate_up_proj")
    QuantConfig(algo="W4A16", group_size=128, exclude_modules=kept).check_fits(smollm2)
    with pytest.raises(InvalidRequest, match=r"of o_proj \(input widths: o_proj 576, down"):
        QuantConfig(algo="W4A16", group_size=128, exclude_modules=(
            "*qkv_proj", "*gate_up_proj", "model.layers.3.self_attn.o_proj")).check_fits(smollm2)


def test_a_split_that_cuts_a_group_is_refused_per_rank():
    with pytest.raises(InvalidRequest, match="per rank at tp_size 2: .*o_proj 32"):
        QuantConfig(algo="W4A16", group_size=64).check_fits(MODEL, tp_size=2)
    QuantConfig(algo="W4A16", group_size=32).check_fits(MODEL, tp_size=2)


@pytest.mark.parametrize("group_size", [16, 96, 256])
def test_int4_group_sizes_are_128_64_or_32(group_size):
    with pytest.raises(InvalidRequest, match="group_size must be one of"):
        QuantConfig(algo="W4A16", group_size=group_size)


def test_calibration_settings_belong_to_awq_only():
    BuildSpec(source="/m", quant=QuantConfig(algo="W4A16_AWQ", calib_num_samples=4),
              calib_data="/data.jsonl")
    with pytest.raises(InvalidRequest, match="calibration settings"):
        BuildSpec(source="/m", quant=QuantConfig(algo="W8A16"), calib_data="/data.jsonl")


def test_kv_cache_dtypes_are_built_and_others_refused():
    for dtype in ("int8", "fp8"):
        BuildSpec(source="/m", quant=QuantConfig(kv_cache_dtype=dtype))
    with pytest.raises(InvalidRequest, match="kv_cache_dtype"):
        QuantConfig(kv_cache_dtype="int4")


@pytest.mark.parametrize("kwargs", [
    dict(source=""), dict(source="/m", name="../x"), dict(source="/m", name="a/b"),
    dict(source="/m", dtype="int3"), dict(source="/m", max_batch_size=0),
    dict(source="/m", target=Target(device="tpu")),
])
def test_bad_settings_are_invalid_requests(kwargs):
    with pytest.raises(InvalidRequest):
        BuildSpec(**kwargs)


def test_tp_that_does_not_divide_heads_is_refused():
    with pytest.raises(InvalidRequest, match="tp_size=3"):
        Mapping(3, 1).check_divides(MODEL)
