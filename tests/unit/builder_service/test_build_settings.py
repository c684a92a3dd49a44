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


@pytest.mark.parametrize("algo", ["W4A16_AWQ", "W8A16", "FP8"])
def test_quantized_builds_are_a_clear_failed_precondition(algo):
    with pytest.raises(FailedPrecondition, match="not supported yet"):
        BuildSpec(source="/m", quant=QuantConfig(algo=algo))


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
