"""Pre-quantized checkpoints holding values no quantizer writes are refused naming the tensor,
and nothing of the build is kept: NaN or inf scales (every logit NaN, token 0 forever), zero
points outside 4 bits or missing from an asymmetric scheme (read as another function), a
linear stored both as float and packed, a packed weight recorded with another shape, and
(plain folders too) weights of more decoder layers than config.json counts. A zero scale is a
legal all-zero group."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from runtime_service.errors import InvalidRequest

from runtime_service.model.loader import load_model
from support.compressed_checkpoints import compressed_fp8_checkpoint
from support.random_llama import hf_greedy, make_random_llama
from support.prequantized_checkpoints import (AWQ_CONFIG, COMPRESSED_CONFIG, PROMPT, Q, awq_gemm,
                                              compressed_int4, edited_copy, group_of, kiln_greedy,
                                              quantized_checkpoint, refused_by_the_build)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("hf") / "llama", num_hidden_layers=2)


DOWN = "model.layers.1.mlp.down_proj."


@pytest.mark.parametrize("kind, name, value", [
    ("awq", Q + "scales", float("nan")), ("awq", DOWN + "scales", float("-inf")),
    ("compressed", Q + "weight_scale", float("inf")),
    ("fp8", DOWN + "weight_scale", float("nan")), ("fp8", DOWN + "weight", float("nan"))])
def test_a_non_finite_stored_value_is_refused_naming_its_tensor(source, tmp_path, kind, name,
                                                                value):
    """One NaN or inf scale made every logit NaN and the engine served token 0 forever; the
    build now stops at it (an FP8 weight's NaN codes alike), and publishes nothing."""
    if kind == "fp8":
        folder = compressed_fp8_checkpoint(source, tmp_path / "q")
    else:
        folder, _ = quantized_checkpoint(source, tmp_path / "q", *(
            (awq_gemm, AWQ_CONFIG) if kind == "awq" else (compressed_int4, COMPRESSED_CONFIG)))

    def poison(stored):
        stored[name] = stored[name].float()
        stored[name].view(-1)[3] = value
        stored[name] = stored[name].to(load_file(str(folder / "model.safetensors"))[name].dtype)
    edited = edited_copy(folder, tmp_path / "edited", tensors=poison)
    refused_by_the_build(edited, tmp_path / "work",
                          rf"{name.replace('.', '[.]')} holds NaN or inf at \[\d+(, \d+)?\] "
                          r"\(1 of \d+\)")


def test_a_zero_scale_is_served_as_an_all_zero_group(source, tmp_path):
    """Zero is a finite scale (an all-zero group's, in a quantizer that does not clamp it): it
    loads, and its group dequantizes to zeros."""
    folder, _ = quantized_checkpoint(source, tmp_path / "q", awq_gemm, AWQ_CONFIG)
    edited = edited_copy(folder, tmp_path / "edited",
                     tensors=lambda t: t[Q + "scales"].__setitem__((0, slice(None)), 0.0))
    qkv = load_model(edited).model.layers["0"].attn.qkv_proj
    assert qkv.scales[:64, 0].eq(0).all()


def _int8_zero_points(stored: dict) -> None:
    """compressed_int4's packed zero points rewritten as signed int8 ones (-8..7)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    for name in [n for n in stored if n.endswith("weight_zero_point")]:
        prefix = name[:-len("weight_zero_point")]
        shape = stored[prefix + "weight_scale"].shape     # [N, groups], as the zero points
        stored[name] = unpack_from_int32(stored[name], 4, shape, packed_dim=0)


def test_compressed_zero_points_outside_four_bits_are_refused_naming_the_range(source,
                                                                               tmp_path):
    """An int8 zero point of 100 was read as nibble 108; int8 ones inside -8..7 are served."""
    folder, float_folder = quantized_checkpoint(source, tmp_path / "q", compressed_int4,
                                                COMPRESSED_CONFIG)
    int8 = edited_copy(folder, tmp_path / "int8", tensors=_int8_zero_points)
    assert load_file(str(int8 / "model.safetensors"))[Q + "weight_zero_point"].dtype == torch.int8
    assert kiln_greedy(int8) == hf_greedy(float_folder, PROMPT, 8)

    def out_of_range(stored):
        _int8_zero_points(stored)
        stored[Q + "weight_zero_point"][5, 1] = 100
    refused_by_the_build(edited_copy(folder, tmp_path / "oob", tensors=out_of_range),
                          tmp_path / "work", r"q_proj[.]weight_zero_point holds 100 .*-8[.][.]7")


def test_an_asymmetric_compressed_linear_without_its_zero_point_is_refused(source, tmp_path):
    """Read as symmetric (zero point 8) it served another function; compressed-tensors writes a
    zero point for every linear of an asymmetric scheme, so one missing is an error."""
    folder, _ = quantized_checkpoint(source, tmp_path / "q", compressed_int4, COMPRESSED_CONFIG)
    edited = edited_copy(folder, tmp_path / "edited",
                     tensors=lambda t: t.pop(Q + "weight_zero_point"))
    refused_by_the_build(edited, tmp_path / "work",
                          r"q_proj[.]weight_zero_point is missing \(1 linear.*symmetric: false")
    # a config that says symmetric while the other linears store zero points: refused too
    mixed = edited_copy(folder, tmp_path / "mixed", config=lambda q: group_of(q, symmetric=True),
                    tensors=lambda t: t.pop(Q + "weight_zero_point"))
    refused_by_the_build(mixed, tmp_path / "work2",
                          r"q_proj[.]weight_zero_point is missing: .*asymmetric")


def test_an_asymmetric_compressed_checkpoint_without_any_zero_point_is_refused(source,
                                                                            tmp_path):
    """`symmetric: false` with no zero point stored anywhere: read as symmetric it would serve
    another function than the checkpoint states."""
    folder, _ = quantized_checkpoint(source, tmp_path / "q", compressed_int4, COMPRESSED_CONFIG)

    def drop_zero_points(stored):
        for name in [n for n in stored if n.endswith("weight_zero_point")]:
            stored.pop(name)
    edited = edited_copy(folder, tmp_path / "edited", tensors=drop_zero_points)
    refused_by_the_build(edited, tmp_path / "work",
                          r"weight_zero_point is missing \(14 linear.*symmetric: false")


@pytest.mark.parametrize("writer, config", [(awq_gemm, AWQ_CONFIG),
                                            (compressed_int4, COMPRESSED_CONFIG)])
def test_a_linear_stored_both_as_float_and_packed_is_refused(writer, config, source, tmp_path):
    """It used to serve the packed form and ignore the float one without a word."""
    folder, _ = quantized_checkpoint(source, tmp_path / "q", writer, config)

    def add_float_weight(stored):
        stored[Q + "weight"] = torch.zeros(64, 64)
    edited = edited_copy(folder, tmp_path / "edited", tensors=add_float_weight)
    refused_by_the_build(edited, tmp_path / "work",
                          r"q_proj is stored both as a float weight and as (qweight|weight_packed)")


def test_a_packed_weight_recorded_with_another_shape_is_refused(source, tmp_path):
    """compressed-tensors records each packed weight's unpacked shape; one that is not the
    linear's says the packing was made for another model. The checkpoint as written loads."""
    folder, _ = quantized_checkpoint(source, tmp_path / "q", compressed_int4, COMPRESSED_CONFIG)
    edited = edited_copy(folder, tmp_path / "edited",
                         tensors=lambda t: t.__setitem__(Q + "weight_shape",
                                                         torch.tensor([64, 128])))
    refused_by_the_build(edited, tmp_path / "work",
                         r"q_proj[.]weight_shape is \[64, 128\]; .* gives this linear \[64, 64\]")


@pytest.mark.parametrize("writer, config", [(None, None), (awq_gemm, AWQ_CONFIG)])
def test_weights_with_layers_past_the_configs_count_are_refused(writer, config, source,
                                                                tmp_path):
    """A config.json saying one layer over weights of two served the first layer alone, another
    model, without a word; plain and pre-quantized folders alike are refused now."""
    folder = source if writer is None else quantized_checkpoint(source, tmp_path / "q", writer,
                                                                config)[0]
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "model.safetensors").symlink_to(folder / "model.safetensors")
    hf_config = json.loads((folder / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**hf_config, "num_hidden_layers": 1}))
    with pytest.raises(InvalidRequest, match=r"decoder layer\(s\) 1 but config.json's "
                                             r"num_hidden_layers is 1"):
        load_model(edited)
    refused_by_the_build(edited, tmp_path / "work", r"num_hidden_layers is 1")
