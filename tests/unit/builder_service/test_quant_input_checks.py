"""A float source whose quantized linear holds a NaN or inf is refused by every quantized build,
naming the tensor, and nothing reaches the store: quantizing it used to succeed with NaN scales,
and the engine then sampled token 0 forever."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from builder_service.settings import BuildSpec
from runtime_service.errors import InvalidRequest
from runtime_service.format.engine_config import QuantConfig
from runtime_service.store import open_store
from support.engine_logits import local_builder

GROUP = 32
WORDS = " ".join(f"w{(i * 37) % 250}" for i in range(1500))


def _with_value(tiny_hf, out, name, index, value):
    """A copy of the tiny model with one element of one tensor set to `value`."""
    shutil.copytree(tiny_hf, out)
    tensors = load_file(str(out / "model.safetensors"))
    tensors[name][index] = value
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _build(tmp_path, folder, algo):
    calibrated = algo == "W4A16_AWQ"
    calib = tmp_path / "calib.jsonl"
    words = WORDS.split()
    calib.write_text("\n".join(json.dumps({"text": " ".join(words[i:i + 500])})
                               for i in range(0, len(words), 500)))
    quant = QuantConfig(algo=algo, group_size=GROUP, **(
        {"calib_num_samples": 2, "calib_seq_len": 32} if calibrated else {}))
    builder = local_builder(tmp_path)
    builder.build(BuildSpec(source=str(folder), dtype="float32", quant=quant,
                            calib_data=str(calib) if calibrated else ""), lambda _: None)


@pytest.mark.parametrize("algo, name, value", [
    ("W4A16", "model.layers.1.self_attn.k_proj.weight", float("nan")),
    ("FP8", "model.layers.0.mlp.down_proj.weight", float("nan")),
    ("W8A16", "model.layers.0.mlp.up_proj.weight", float("inf")),
    ("W4A16_AWQ", "model.layers.1.self_attn.o_proj.weight", float("-inf")),
])
def test_a_float_source_with_a_non_finite_linear_weight_is_refused_and_nothing_published(
        tmp_path, tiny_hf, algo, name, value):
    folder = _with_value(tiny_hf, tmp_path / "src", name, (3, 5), value)
    kiln_name = {"k_proj": "layers.1.attn.qkv_proj", "down_proj": "layers.0.mlp.down_proj",
                 "up_proj": "layers.0.mlp.gate_up_proj", "o_proj": "layers.1.attn.o_proj"}[
        name.split(".")[-2]]
    with pytest.raises(InvalidRequest,
                       match=rf"source weight {kiln_name}\.weight holds NaN or inf"):
        _build(tmp_path, folder, algo)
    assert open_store(str(tmp_path / "store")).list_engine_keys() == []
    builds = tmp_path / "w" / "builds"
    assert not builds.exists() or not any(builds.iterdir())

