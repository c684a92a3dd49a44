"""Quantized builds: the engine holds the format's tensors, computes close to the float model,
splits into shards of one quantization, and calibrated builds key, report and clean up right."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from builder_service import awq
from builder_service.calibration import CalibrationData
from builder_service.pipeline import BuildProgress
from builder_service.reshard import KilnShards
from builder_service.settings import BuildSpec
from runtime_service.errors import Cancelled
from runtime_service.format.engine_config import EngineConfig, Mapping, QuantConfig
from runtime_service.model.loader import load_model
from runtime_service.store import open_store
from support.engine_logits import folder_logits, local_builder, model_logits
from support.tiny_llama import make_tiny_llama

GROUP = 32
WORDS = " ".join(f"w{(i * 37) % 250}" for i in range(3000))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("hf") / "tiny")
    calib = folder.parent / "calib.jsonl"
    words = WORDS.split()
    calib.write_text("\n".join(json.dumps({"text": " ".join(words[i:i + 500])})
                               for i in range(0, len(words), 500)))
    return folder, calib


@pytest.fixture(scope="module")
def awq_engine(tmp_path_factory, tiny):
    """One AWQ build shared by the tests that only read it, and the events it reported."""
    events: list[BuildProgress] = []
    folder, _ = build(tmp_path_factory.mktemp("awq"), tiny, "W4A16_AWQ", progress=events.append)
    return folder, events


def build(tmp_path, tiny, algo, tp=1, pp=1, progress=lambda _: None, **quant):
    folder, calib = tiny
    calibrated = algo == "W4A16_AWQ"
    spec = BuildSpec(source=str(folder), dtype="float32", mapping=Mapping(tp, pp),
                     quant=QuantConfig(algo=algo, group_size=GROUP,
                                       **({"calib_num_samples": 4, "calib_seq_len": 64,
                                           **quant} if calibrated else quant)),
                     calib_data=str(calib) if calibrated else "")
    outcome = local_builder(tmp_path).build(spec, progress)
    return tmp_path / "store" / "engines" / outcome.engine.engine_key, outcome


def tensors(path):
    with safe_open(path, framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


PROMPT = [5, 17, 99, 3, 250, 8, 9, 41, 2, 120, 33, 7]
KINDS = {"W8A16": (torch.int8, torch.float32), "FP8": (torch.float8_e4m3fn, torch.float32),
         "W4A16": (torch.uint8, torch.float32)}


@pytest.mark.parametrize("algo, min_cosine", [("W8A16", 0.999), ("FP8", 0.995),
                                              ("W4A16", 0.95)])
def test_quantized_engine_holds_the_format_tensors_and_computes_close_to_float(
        algo, min_cosine, tmp_path, tiny):
    folder, _ = build(tmp_path, tiny, algo)
    config = EngineConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert config.quant.algo == algo and config.quant.calib_sha256 == ""
    held = tensors(folder / "rank0.safetensors")
    code_dtype, scale_dtype = KINDS[algo]
    qkv = "layers.0.attn.qkv_proj."
    assert held[qkv + "qweight"].dtype == code_dtype
    assert held[qkv + "scales"].dtype == scale_dtype
    assert (qkv + "zeros" in held) == (algo == "W4A16")
    if algo == "W4A16":
        assert held[qkv + "qweight"].shape == (128, 32) and held[qkv + "scales"].shape == (128, 2)
    assert qkv + "weight" not in held
    for kept in ("embed_tokens.weight", "lm_head.weight", "norm.weight",
                 "layers.0.input_norm.weight"):
        assert held[kept].dtype == torch.float32
    got, want = folder_logits(folder, PROMPT), folder_logits(tiny[0], PROMPT)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cosine.min() > min_cosine, cosine


@pytest.mark.parametrize("algo", ["W4A16", "W8A16", "FP8"])
def test_split_quantized_engine_is_the_slices_of_one_quantization(algo, tmp_path, tiny):
    whole, _ = build(tmp_path / "one", tiny, algo)
    split, _ = build(tmp_path / "split", tiny, algo, tp=2, pp=2)
    config = EngineConfig.from_dict(json.loads((split / "config.json").read_text()))
    rank0 = tensors(split / "rank0.safetensors")
    assert rank0["layers.0.attn.o_proj.qweight"].shape[1] * 2 == \
        tensors(whole / "rank0.safetensors")["layers.0.attn.o_proj.qweight"].shape[1]
    rejoined = KilnShards(split, config)
    for name, tensor in tensors(whole / "rank0.safetensors").items():
        assert torch.equal(rejoined.get(name).view(torch.uint8) if tensor.dtype ==
                           torch.float8_e4m3fn else rejoined.get(name),
                           tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn
                           else tensor), name


KEPT = ("model.layers.0.self_attn.q_proj", "*.mlp.down_proj")


def _kept(name: str) -> bool:
    """Whether a Kiln tensor belongs to a linear that KEPT keeps unquantized."""
    return name.startswith("layers.0.attn.qkv_proj.") or ".mlp.down_proj." in name


@pytest.mark.parametrize("algo", ["W8A16", "W4A16", "FP8"])
def test_excluded_linears_keep_the_source_weights_and_the_rest_quantize_as_before(
        algo, tmp_path, tiny):
    kept, _ = build(tmp_path / "kept", tiny, algo, exclude_modules=KEPT)
    whole, _ = build(tmp_path / "whole", tiny, algo)
    held, quantized = tensors(kept / "rank0.safetensors"), tensors(whole / "rank0.safetensors")
    source = load_file(str(tiny[0] / "model.safetensors"))
    assert torch.equal(held["layers.0.attn.qkv_proj.weight"], torch.cat(
        [source[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"]))
    for i in range(2):
        assert torch.equal(held[f"layers.{i}.mlp.down_proj.weight"],
                           source[f"model.layers.{i}.mlp.down_proj.weight"])
    for name, tensor in quantized.items():         # the rest: the same quantization as before
        if not _kept(name):
            assert torch.equal(held[name].view(torch.uint8), tensor.view(torch.uint8)), name
    assert not [n for n in held if _kept(n) and not n.endswith(("weight", "bias"))]
    loaded = load_model(kept, "cpu", "float32")
    assert loaded.config.quant.exclude_modules == KEPT
    layers = loaded.model.layers
    assert layers["0"].attn.qkv_proj.quant is None and layers["0"].mlp.down_proj.quant is None
    assert layers["1"].attn.qkv_proj.quant is not None
    assert layers["1"].mlp.gate_up_proj.quant is not None
    got, want = folder_logits(kept, PROMPT), folder_logits(tiny[0], PROMPT)
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.95


def test_an_engine_that_excludes_every_linear_computes_the_float_model_exactly(tmp_path, tiny):
    folder, _ = build(tmp_path, tiny, "W4A16", exclude_modules=["*"])
    assert torch.equal(folder_logits(folder, PROMPT), folder_logits(tiny[0], PROMPT))


def test_a_split_engine_with_excluded_linears_is_the_slices_of_the_whole(tmp_path, tiny):
    whole, _ = build(tmp_path / "one", tiny, "W4A16", exclude_modules=KEPT)
    split, _ = build(tmp_path / "split", tiny, "W4A16", tp=2, pp=2, exclude_modules=KEPT)
    config = EngineConfig.from_dict(json.loads((split / "config.json").read_text()))
    rejoined = KilnShards(split, config)
    for name, tensor in tensors(whole / "rank0.safetensors").items():
        assert torch.equal(rejoined.get(name), tensor), name


def test_engine_key_follows_every_quant_setting_and_the_calibration_digest(tmp_path, tiny):
    folder, calib = tiny
    b = local_builder(tmp_path)
    source = b.sources.resolve(str(folder))

    def key(quant, data=""):
        spec = BuildSpec(source=str(folder), quant=quant, calib_data=data)
        from builder_service.engine_key import engine_key
        target = b.target_config(spec, source.config, b.calibration(spec))
        return engine_key("d" * 64, target.build, target.quant, target.mapping, target.target)

    awq_default = QuantConfig(algo="W4A16_AWQ", group_size=32)
    keys = {key(QuantConfig()), key(QuantConfig(algo="W8A16")), key(QuantConfig(algo="FP8")),
            key(QuantConfig(algo="W4A16", group_size=32)),
            key(QuantConfig(algo="W4A16", group_size=64)), key(awq_default),
            key(awq_default, str(calib)),
            key(QuantConfig(algo="W4A16_AWQ", group_size=32, calib_num_samples=3), str(calib)),
            key(QuantConfig(algo="W4A16_AWQ", group_size=32, calib_seq_len=99), str(calib)),
            key(QuantConfig(algo="W8A16", exclude_modules=["*.mlp.down_proj"]))}
    assert len(keys) == 10
    # nothing quantized, nothing excluded: the same engine, the same key
    assert key(QuantConfig(exclude_modules=["lm_head"])) == key(QuantConfig())
    assert key(awq_default, str(calib)) == key(awq_default, str(calib))
    calib.write_text(calib.read_text() + "\n" + json.dumps({"text": "w1 w2"}))
    assert key(awq_default, str(calib)) not in keys


def test_awq_build_reports_calibration_layer_by_layer_and_records_its_data(awq_engine):
    folder, events = awq_engine
    calibrate = [e for e in events if e.stage == "calibrate"]
    assert [(e.done, e.total) for e in calibrate] == [(0, 2), (1, 2), (2, 2)]
    assert calibrate[0].message == "4 windows of 64 tokens"
    config = EngineConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert len(config.quant.calib_sha256) == 64 and config.quant.calib_num_samples == 4
    stages = [e.stage for e in events]
    assert stages.index("calibrate") < stages.index("convert")


def test_awq_scales_fold_into_norms_and_linears_without_changing_the_float_model(
        tmp_path, tiny, monkeypatch):
    """With clipping off (its first step keeps every range), the rewritten float tensors are
    the same function: only the int4 rounding is left to differ."""
    folder, _ = tiny
    monkeypatch.setattr(awq, "CLIP_STEPS", 1)
    data = CalibrationData((WORDS,), "0" * 64, 4, 64)
    rewritten = awq.awq_rewrite(folder, "hf", QuantConfig(algo="W4A16_AWQ", group_size=GROUP),
                                data, lambda *_: None)
    model = load_model(folder, "cpu", "float32").model
    changed = [n for n, p in model.named_parameters()
               if n in rewritten and not torch.equal(p, rewritten[n])]
    assert "layers.0.input_norm.weight" in changed and "layers.1.mlp.down_proj.weight" in changed
    want = model_logits(model, PROMPT)
    with torch.inference_mode():
        for name, param in model.named_parameters():
            if name in rewritten:
                param.copy_(rewritten[name])
    assert torch.allclose(model_logits(model, PROMPT), want, atol=1e-4, rtol=1e-4)


def test_awq_neither_scales_nor_clips_a_linear_it_leaves_unquantized(tiny):
    folder, _ = tiny
    data = CalibrationData((WORDS,), "0" * 64, 4, 64)
    kept = frozenset({"layers.0.mlp.down_proj", "layers.1.mlp.down_proj",
                      "layers.1.attn.qkv_proj"})
    rewritten = awq.awq_rewrite(folder, "hf", QuantConfig(algo="W4A16_AWQ", group_size=GROUP),
                                data, lambda *_: None, kept)
    model = load_model(folder, "cpu", "float32").model
    params = dict(model.named_parameters())
    for name in ("layers.0.mlp.down_proj.weight", "layers.1.mlp.down_proj.weight",
                 "layers.1.input_norm.weight"):          # qkv's scale lives in the norm
        assert torch.equal(rewritten[name], params[name]), name
    for name in ("layers.0.attn.qkv_proj.weight", "layers.1.mlp.gate_up_proj.weight",
                 "layers.0.input_norm.weight"):
        assert not torch.equal(rewritten[name], params[name]), name


def test_awq_beats_round_to_nearest_on_text_like_its_calibration(tmp_path, tiny, awq_engine):
    awq_folder, _ = awq_engine
    rtn_folder, _ = build(tmp_path / "rtn", tiny, "W4A16")
    text = [int(w[1:]) for w in WORDS.split()[1000:1096]]
    want = folder_logits(tiny[0], text)
    errors = {name: (folder_logits(folder, text) - want).pow(2).mean().item()
              for name, folder in (("awq", awq_folder), ("rtn", rtn_folder))}
    assert errors["awq"] < errors["rtn"], errors


def test_cancelled_calibration_leaves_nothing_behind(tmp_path, tiny):
    def cancel_in_calibration(event):
        if event.stage == "calibrate" and event.done == 1:
            raise Cancelled("caller went away")

    with pytest.raises(Cancelled):
        build(tmp_path, tiny, "W4A16_AWQ", progress=cancel_in_calibration)
    builds = tmp_path / "w" / "builds"
    assert not builds.exists() or not any(builds.iterdir())
    assert open_store(str(tmp_path / "store")).list_engine_keys() == []
