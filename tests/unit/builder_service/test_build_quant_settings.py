"""The builder keeps out of an engine's config, and so out of its key, every quantization setting
that cannot change its bytes, and refuses the ones it cannot honour: one engine, one key, and no
setting silently dropped."""

from __future__ import annotations

import logging

import pytest

from builder_service.engine_key import engine_key
from builder_service.settings import BuildSpec
from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.format.engine_config import Mapping, QuantConfig
from runtime_service.format.linear_names import matching_no_linear
from support.engine_logits import local_builder
from support.tiny_llama import make_tiny_llama


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("settings")
    builder = local_builder(root)
    return builder, make_tiny_llama(root / "hf" / "tiny")


@pytest.fixture(scope="module")
def int4_engine(work):
    """A W4A16 engine (group 32, down_proj left in float) built from the float model: itself a
    pre-quantized source."""
    builder, folder = work
    outcome = builder.build(BuildSpec(source=str(folder), dtype="float32", quant=QuantConfig(
        algo="W4A16", group_size=32, exclude_modules=("*.down_proj",))))
    return builder.store.engine_uri(outcome.engine.engine_key).removeprefix("file://")


def target(builder, source, calib_data="", **quant):
    spec = BuildSpec(source=str(source), dtype="float32", quant=QuantConfig(**quant),
                     calib_data=calib_data)
    resolved = builder.sources.resolve(str(source))
    config = builder.target_config(spec, resolved.config)
    return config, engine_key("d" * 64, config.build, config.quant, config.mapping, config.target)


def test_patterns_matching_no_linear_are_named_in_a_warning_and_kept_as_the_peer_keeps_them(
        work, caplog):
    builder, folder = work
    asked = ("lm_head", "model.layers.99.*", "*.down_proj", "model.layers.0.self_atn.q_proj")
    with caplog.at_level(logging.WARNING, logger="kiln.builder"):
        config, _ = target(builder, folder, algo="W8A16", exclude_modules=asked)
    assert config.quant.exclude_modules == asked
    assert "'lm_head', 'model.layers.99.*', 'model.layers.0.self_atn.q_proj'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kiln.builder"):
        target(builder, folder, algo="W8A16", exclude_modules=("*.down_proj",))
    assert "exclude_modules" not in caplog.text


def test_a_pattern_matches_by_any_name_of_the_linear():
    assert matching_no_linear(("layers.1.mlp.down_proj", "model.layers.1.self_attn.k_proj",
                               "transformer.layers.0.mlp.fc", "*.q_proj", "layers.2.*",
                               "*.o_proj*", "*.o_proj*"), num_layers=2) == ("layers.2.*",)


@pytest.mark.parametrize("algo", ["NONE", "W8A16", "FP8"])
def test_the_group_size_of_an_algorithm_without_groups_leaves_the_engine_as_it_is(work, algo):
    builder, folder = work
    configs = [target(builder, folder, algo=algo, group_size=size) for size in (128, 64, 7)]
    assert {key for _, key in configs} == {configs[0][1]}
    assert {config.quant.group_size for config, _ in configs} == {128}


def test_int4_group_sizes_still_give_engines_of_their_own(work):
    builder, folder = work
    keys = {target(builder, folder, algo="W4A16", group_size=size)[1] for size in (64, 32)}
    assert len(keys) == 2


def test_a_prequantized_source_is_not_calibrated_again(work, int4_engine):
    builder, _ = work
    with pytest.raises(InvalidRequest, match="already quantized .W4A16.*calib"):
        target(builder, int4_engine, algo="W4A16_AWQ", group_size=32, calib_num_samples=3)
    with pytest.raises(InvalidRequest, match="already quantized"):
        target(builder, int4_engine, calib_data="/nonexistent.txt", algo="W4A16_AWQ",
               group_size=32)


def test_exclusions_a_prequantized_source_cannot_honour_are_refused(work, int4_engine):
    builder, _ = work
    for quant in ({}, {"algo": "W4A16", "group_size": 32}):
        with pytest.raises(FailedPrecondition, match="asks for 2 .layers.0.attn.o_proj"):
            target(builder, int4_engine, exclude_modules=("*.o_proj",), **quant)


def test_a_prequantized_source_named_as_it_is_gives_its_one_engine(work, int4_engine):
    builder, _ = work
    plain, key = target(builder, int4_engine)
    assert plain.quant.exclude_modules == ("*.down_proj",)
    assert plain.quant.calib_num_samples == 0
    for quant in ({"algo": "W4A16", "group_size": 32},
                  {"exclude_modules": ("model.layers.*.mlp.down_proj",)},
                  {"algo": "W4A16", "group_size": 32, "exclude_modules": ("layers.?.mlp.down*",)}):
        assert target(builder, int4_engine, **quant)[1] == key
    with pytest.raises(FailedPrecondition, match="already quantized"):
        target(builder, int4_engine, algo="W4A16", group_size=64)
    fp8_kv = target(builder, int4_engine, kv_cache_dtype="fp8")
    assert fp8_kv[0].quant.kv_cache_dtype == "fp8" and fp8_kv[1] != key


def test_a_split_of_a_prequantized_source_keeps_its_quantization(work, int4_engine):
    builder, _ = work
    spec = BuildSpec(source=int4_engine, dtype="float32", mapping=Mapping(tp_size=2))
    config = builder.target_config(spec, builder.sources.resolve(int4_engine).config)
    assert (config.quant.algo, config.quant.group_size, config.quant.exclude_modules) == (
        "W4A16", 32, ("*.down_proj",))
