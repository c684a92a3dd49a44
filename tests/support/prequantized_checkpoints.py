"""Pre-quantized HF checkpoints written from a random LLaMA (AutoAWQ GEMM and compressed-tensors
pack-quantized int4), copies of them edited one tensor or config entry at a time, and the
engine the builder makes of one: what tests/unit/runtime_service/model/test_prequantized*.py
read and refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from builder_service.builder import EngineBuilder
from builder_service.settings import BuildSpec
from builder_service.sources import SourceResolver
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.errors import InvalidRequest
from runtime_service.format.engine_config import Mapping, QuantConfig
from runtime_service.model.layers.quantize import dequantize_int4, quantize_int4, unpack_int4
from runtime_service.model.prequantized import AWQ_ORDER
from runtime_service.store import open_store

GROUP = 32
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT = [5, 17, 99, 3, 250, 8, 9]


def _pack_columns(codes: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """uint8 [R, C] -> int32 [R, C // 8], nibble i holding column 8j + order[i]."""
    grouped = codes.to(torch.int64).reshape(codes.shape[0], -1, 8)[..., list(order)]
    packed = (grouped << torch.arange(0, 32, 4)).sum(-1)
    return torch.where(packed >= 2 ** 31, packed - 2 ** 32, packed).to(torch.int32)


def symmetric_int4(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """compressed-tensors' symmetric int4: q in -8..7, scale = max|w| / 7 per group (stored as
    unsigned codes q + 8 with zero point 8)."""
    groups = w.float().reshape(w.shape[0], -1, GROUP)
    scales = (groups.abs().amax(-1) / 7).clamp(min=1e-8).to(torch.float16)
    q = torch.round(groups / scales.float()[..., None]).clamp(-8, 7) + 8
    codes = q.reshape(w.shape).to(torch.uint8)
    return {"qweight": codes[:, 0::2] | (codes[:, 1::2] << 4), "scales": scales,
            "zeros": torch.full(scales.shape, 8, dtype=torch.uint8)}


def quantized_checkpoint(folder, out, write_linear, quantization_config,
                         quantize=lambda w: quantize_int4(w, GROUP, torch.float16), keep=()):
    """`folder`'s model with each decoder linear replaced by `write_linear`'s tensors (those
    whose name contains a string in `keep` left as they are), and the float model those
    tensors dequantize to (what transformers is compared on)."""
    weights = load_file(str(folder / "model.safetensors"))
    dequantized = dict(weights)
    for name in [n for n in weights if n.endswith(".weight") and n.split(".")[-2] in LINEARS
                 and not any(k in n for k in keep)]:
        w = weights.pop(name)
        q = quantize(w)
        dequantized[name] = dequantize_int4(q["qweight"], q["scales"].float(), q["zeros"], GROUP)
        weights.update(write_linear(name[:-len("weight")], q, w.shape))
    out.mkdir()
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config,
                                                 "quantization_config": quantization_config}))
    float_folder = out.parent / (out.name + "-float")
    float_folder.mkdir()
    save_file(dequantized, str(float_folder / "model.safetensors"), metadata={"format": "pt"})
    (float_folder / "config.json").write_text((folder / "config.json").read_text())
    return out, float_folder


def awq_gemm(prefix, q, shape):
    codes = unpack_int4(q["qweight"])                                   # [N, K]
    return {prefix + "qweight": _pack_columns(codes.T.contiguous(), AWQ_ORDER),
            prefix + "qzeros": _pack_columns(q["zeros"].T.contiguous(), AWQ_ORDER),
            prefix + "scales": q["scales"].T.contiguous()}


def compressed_int4(prefix, q, shape):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    signed = unpack_int4(q["qweight"]).to(torch.int16) - 8
    zero = q["zeros"].to(torch.int16) - 8
    return {prefix + "weight_packed": pack_to_int32(signed.to(torch.int8), 4),
            prefix + "weight_scale": q["scales"],
            prefix + "weight_zero_point": pack_to_int32(zero.to(torch.int8), 4, packed_dim=0),
            prefix + "weight_shape": torch.tensor(list(shape))}


def compressed_symmetric_int4(prefix, q, shape):
    """What compressed-tensors writes for a symmetric scheme: no zero point at all."""
    tensors = compressed_int4(prefix, q, shape)
    del tensors[prefix + "weight_zero_point"]
    return tensors


AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm",
              "zero_point": True}
COMPRESSED_CONFIG = {
    "quant_method": "compressed-tensors", "format": "pack-quantized",
    "quantization_status": "compressed", "ignore": ["lm_head"],
    "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
        "group_size": GROUP}}}}


def kiln_greedy(folder, tokens=8):
    executor = Executor.from_folder(folder, ExecutorOptions(load_tokenizer=False,
                                                            kv_max_tokens=256)).start()
    try:
        stream = executor.submit(Request("r", PROMPT, SamplingParams(max_new_tokens=tokens,
                                                                     ignore_eos=True)))
        return [t for o in stream for t in o.new_token_ids]
    finally:
        executor.shutdown()


def built_engine(folder: Path, work: Path, tp: int = 1, pp: int = 1, quant="NONE") -> Path:
    """`folder` built by the builder as it is quantized (by default no quant setting asked
    for; else `quant`, the algorithm it already has, by name)."""
    builder = EngineBuilder(open_store(str(work / "store")), SourceResolver(work / "b", None),
                            work / "b")
    outcome = builder.build(BuildSpec(source=str(folder), dtype="float32",
                                      mapping=Mapping(tp, pp), quant=QuantConfig(
                                          algo=quant, group_size=GROUP)), lambda _: None)
    return work / "store" / "engines" / outcome.engine.engine_key


def edited_copy(folder: Path, out: Path, config=None, tensors=None) -> Path:
    """A copy of `folder` with `config(quantization_config)` and `tensors(stored)` applied."""
    out.mkdir()
    stored = load_file(str(folder / "model.safetensors"))
    if tensors is not None:
        tensors(stored)
    save_file({name: t.contiguous() for name, t in stored.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    hf_config = json.loads((folder / "config.json").read_text())
    if config is not None:
        hf_config["quantization_config"] = config(hf_config["quantization_config"])
    (out / "config.json").write_text(json.dumps(hf_config))
    return out


Q = "model.layers.0.self_attn.q_proj."


def group_of(q, **weights):
    group = dict(q["config_groups"]["group_0"])
    group["weights"] = {**group["weights"], **weights}
    return {**q, "config_groups": {"group_0": group}}


def refused_by_the_build(folder: Path, work: Path, words: str) -> None:
    """The builder refuses `folder` with an InvalidRequest matching `words`, and neither the
    store nor the work dir keeps anything of the build."""
    with pytest.raises(InvalidRequest, match=words):
        built_engine(folder, work)
    assert open_store(str(work / "store")).list_engine_keys() == []
    builds = work / "b" / "builds"
    assert not builds.exists() or not any(builds.iterdir())
