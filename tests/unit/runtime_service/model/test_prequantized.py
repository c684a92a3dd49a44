"""Pre-quantized HF checkpoints (AutoAWQ GEMM, compressed-tensors pack-quantized int4 and
float-quantized FP8) are served as they are stored: greedy tokens equal transformers' on the
same weights, split engines are slices of the stored tensors, and schemes Kiln would serve as
another function are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from builder_service.reshard import KilnShards
from builder_service.sources import SourceResolver
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.format.engine_config import EngineConfig
from runtime_service.model.layers.quantize import quantize_int4
from runtime_service.model.loader import load_model
from runtime_service.model.prequantized import quant_config_of
from support.compressed_checkpoints import compressed_fp8_checkpoint
from support.random_llama import hf_greedy, make_random_llama
from support.prequantized_checkpoints import (AWQ_CONFIG, COMPRESSED_CONFIG, GROUP, PROMPT, Q,
                                              awq_gemm, built_engine, compressed_int4,
                                              compressed_symmetric_int4, edited_copy, group_of,
                                              kiln_greedy, quantized_checkpoint, symmetric_int4)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("hf") / "llama", num_hidden_layers=2)


@pytest.mark.parametrize("writer, config, algo", [
    (awq_gemm, AWQ_CONFIG, "W4A16_AWQ"), (compressed_int4, COMPRESSED_CONFIG, "W4A16")])
def test_prequantized_checkpoint_is_served_without_requantizing(writer, config, algo, source,
                                                                 tmp_path):
    folder, float_folder = quantized_checkpoint(source, tmp_path / "q", writer, config)
    loaded = load_model(folder)
    assert loaded.config.quant.algo == algo and loaded.config.quant.group_size == GROUP
    layer = loaded.model.layers["0"].mlp.down_proj
    q = quantize_int4(load_file(str(source / "model.safetensors"))[
        "model.layers.0.mlp.down_proj.weight"], GROUP, torch.float16)
    assert torch.equal(layer.qweight, q["qweight"]) and torch.equal(layer.zeros, q["zeros"])
    assert kiln_greedy(folder) == hf_greedy(float_folder, PROMPT, 8)


def test_transformers_runs_the_compressed_tensors_checkpoint_as_kiln_does(source, tmp_path):
    """transformers itself decompresses a symmetric pack-quantized checkpoint on the CPU (its
    loader does not take asymmetric checkpoints' packed zero points in this version)."""
    config = json.loads(json.dumps(COMPRESSED_CONFIG))
    config["config_groups"]["group_0"]["weights"]["symmetric"] = True
    folder, _ = quantized_checkpoint(source, tmp_path / "q", compressed_symmetric_int4, config,
                                     symmetric_int4)
    assert load_model(folder).model.layers["0"].attn.qkv_proj.zeros.eq(8).all()
    assert kiln_greedy(folder) == hf_greedy(folder, PROMPT, 8)


@pytest.mark.parametrize("strategy", ["channel", "tensor"])
def test_compressed_tensors_fp8_checkpoint_is_served_as_transformers_runs_it(source, tmp_path,
                                                                            strategy):
    """transformers decompresses the FP8 weights on the CPU and keeps quantizing each linear's
    input per token at run time, as Kiln's FP8 layer does: prompt log-probabilities agree to
    rounding (switching transformers' activation quantization off moves them by ~0.4). A
    per-tensor weight scale is every row's scale."""
    from transformers import LlamaForCausalLM
    folder = compressed_fp8_checkpoint(source, tmp_path / "fp8", strategy)
    stored = load_file(str(folder / "model.safetensors"))
    assert stored["model.layers.0.mlp.down_proj.weight"].dtype == torch.float8_e4m3fn
    loaded = load_model(folder)
    assert loaded.config.quant.algo == "FP8"
    down = loaded.model.layers["0"].mlp.down_proj
    assert torch.equal(down.qweight.view(torch.uint8),
                       stored["model.layers.0.mlp.down_proj.weight"].view(torch.uint8))
    stored_scale = stored["model.layers.0.mlp.down_proj.weight_scale"].flatten()
    assert stored_scale.numel() == (1 if strategy == "tensor" else down.scales.numel())
    assert torch.equal(down.scales, stored_scale.expand(down.scales.shape))
    assert kiln_greedy(folder, 12) == hf_greedy(folder, PROMPT, 12)

    hf = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(torch.tensor([PROMPT])).logits[0], -1)
    expected = logprobs[torch.arange(len(PROMPT) - 1), PROMPT[1:]]
    executor = Executor.from_folder(folder, ExecutorOptions(load_tokenizer=False,
                                                            kv_max_tokens=256)).start()
    try:
        stream = executor.submit(Request("p", PROMPT, SamplingParams(
            max_new_tokens=1, prompt_logprobs=True, end_id=-1)))
        kiln = [x for o in stream for x in (o.prompt_logprobs or [])]
    finally:
        executor.shutdown()
    assert torch.allclose(torch.tensor(kiln), expected, atol=1e-4)


def with_g_idx(shuffled: bool):
    """compressed_int4 plus the weight_g_idx GPTQ's activation ordering stores: column k's
    group, either the plain k // GROUP or activation-ordered (groups out of column order)."""
    def write(prefix, q, shape):
        columns = shape[1]
        g_idx = torch.arange(columns, dtype=torch.int32) // GROUP
        if shuffled:
            g_idx = g_idx[torch.randperm(columns, generator=torch.Generator().manual_seed(0))]
        return {**compressed_int4(prefix, q, shape), prefix + "weight_g_idx": g_idx}
    return write


def test_activation_ordered_groups_are_refused_and_plain_ones_served(source, tmp_path):
    """Groups out of column order cannot be read by the int4 kernels: refused by the config's
    actorder, and by the stored g_idx when the config does not say; a plain g_idx is served."""
    ordered = json.loads(json.dumps(COMPRESSED_CONFIG))
    ordered["config_groups"]["group_0"]["weights"]["actorder"] = "group"
    with pytest.raises(FailedPrecondition, match="actorder: group.*'static'"):
        quant_config_of({"quantization_config": ordered})

    folder, _ = quantized_checkpoint(source, tmp_path / "shuffled", with_g_idx(True),
                                     COMPRESSED_CONFIG)
    with pytest.raises(FailedPrecondition, match="q_proj: .*activation-ordered groups"):
        load_model(folder)

    folder, float_folder = quantized_checkpoint(source, tmp_path / "plain", with_g_idx(False),
                                                COMPRESSED_CONFIG)
    assert kiln_greedy(folder) == hf_greedy(float_folder, PROMPT, 8)


@pytest.mark.parametrize("writer, config", [
    (awq_gemm, {**AWQ_CONFIG, "modules_to_not_convert": ["down_proj", "layers.1.self_attn"]}),
    (compressed_int4, {**COMPRESSED_CONFIG, "ignore": [
        "lm_head", "re:.*down_proj$", "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj",
        "model.layers.1.self_attn.o_proj"]})])
def test_linears_a_checkpoint_left_unquantized_are_served_in_float(writer, config, source,
                                                                   tmp_path):
    """AutoAWQ's modules_to_not_convert and compressed-tensors' ignore store some linears as
    plain weights; Kiln reads which from the tensors, serves them in float and the rest
    quantized, and the builder keeps them so."""
    folder, float_folder = quantized_checkpoint(
        source, tmp_path / "q", writer, config, keep=("down_proj", "layers.1.self_attn"))
    loaded = load_model(folder)
    kept = {"layers.0.mlp.down_proj", "layers.1.mlp.down_proj", "layers.1.attn.qkv_proj",
            "layers.1.attn.o_proj"}
    assert set(loaded.config.quant.exclude_modules) == kept
    layers = loaded.model.layers
    assert layers["1"].attn.qkv_proj.quant is None and layers["0"].mlp.down_proj.quant is None
    assert layers["0"].attn.qkv_proj.quant is not None
    assert layers["1"].mlp.gate_up_proj.quant is not None
    want = hf_greedy(float_folder, PROMPT, 8)
    assert kiln_greedy(folder) == want
    engine = built_engine(folder, tmp_path / "built")
    config = EngineConfig.from_dict(json.loads((engine / "config.json").read_text()))
    assert set(config.quant.exclude_modules) == kept
    assert kiln_greedy(engine) == want
    named = built_engine(folder, tmp_path / "named", quant=loaded.config.quant.algo)
    assert named.name == engine.name         # its algorithm by name: the same engine
    # through `kiln convert` to a Kiln checkpoint, then a tp=2 engine of that checkpoint
    from builder_service.pipeline import convert_checkpoint
    checkpoint = tmp_path / "checkpoint"
    convert_checkpoint(SourceResolver(tmp_path / "c", None).resolve(str(folder)), checkpoint)
    split = built_engine(checkpoint, tmp_path / "split", tp=2)
    config = EngineConfig.from_dict(json.loads((split / "config.json").read_text()))
    assert set(config.quant.exclude_modules) == kept
    rejoined = KilnShards(split, config)
    with safe_open(str(engine / "rank0.safetensors"), framework="pt") as handle:
        for name in handle.keys():
            assert torch.equal(rejoined.get(name), handle.get_tensor(name)), name


def test_a_fused_linear_stored_half_quantized_is_refused_naming_its_parts(source, tmp_path):
    folder, _ = quantized_checkpoint(source, tmp_path / "q", compressed_int4, COMPRESSED_CONFIG,
                                     keep=("layers.0.self_attn.q_proj",))
    with pytest.raises(FailedPrecondition,
                       match=r"layers.0.self_attn.q_proj is stored unquantized but "
                             r"model.layers.0.self_attn.k_proj, .*v_proj quantized"):
        load_model(folder)


@pytest.mark.parametrize("kind", ["int4", "fp8"])
def test_a_split_prequantized_engine_is_the_slices_of_its_one_rank_build(kind, source,
                                                                         tmp_path):
    """tp x pp builds of a pre-quantized folder cut its stored tensors, never re-quantize."""
    folder = (quantized_checkpoint(source, tmp_path / "q", compressed_int4, COMPRESSED_CONFIG)[0]
              if kind == "int4" else compressed_fp8_checkpoint(source, tmp_path / "q"))
    whole = built_engine(folder, tmp_path / "one")
    split = built_engine(folder, tmp_path / "split", tp=2, pp=2)
    config = EngineConfig.from_dict(json.loads((split / "config.json").read_text()))
    assert config.quant.algo == ("W4A16" if kind == "int4" else "FP8")
    rejoined = KilnShards(split, config)
    with safe_open(str(whole / "rank0.safetensors"), framework="pt") as handle:
        for name in handle.keys():
            want, got = handle.get_tensor(name), rejoined.get(name)
            if want.dtype == torch.float8_e4m3fn:
                want, got = want.view(torch.uint8), got.view(torch.uint8)
            assert torch.equal(got, want), name


def test_a_checkpoint_that_quantized_lm_head_is_refused_not_read_as_weights(source, tmp_path):
    """Its lm_head holds e4m3 codes and a scale: read as a float weight, the logits were off by
    the scale (885x in relative error) with no error at all."""
    folder = compressed_fp8_checkpoint(source, tmp_path / "head", quantize_head=True)
    assert "lm_head.weight_scale" in load_file(str(folder / "model.safetensors"))
    with pytest.raises(FailedPrecondition, match="quantizes lm_head.*ignore: .lm_head."):
        load_model(folder)


def test_unsupported_prequantized_schemes_are_refused_naming_what_is_read():
    from compressed_tensors.quantization import preset_name_to_scheme
    for preset in ("FP8", "W4AFP8", "W8A16"):   # static input scales; quantized inputs; int8
        scheme = preset_name_to_scheme(preset, ["Linear"]).model_dump(mode="json")
        config = {**COMPRESSED_CONFIG, "config_groups": {"group_0": scheme},
                  "format": "float-quantized" if preset == "FP8" else "pack-quantized"}
        with pytest.raises(FailedPrecondition, match="FP8_DYNAMIC.*input activations"):
            quant_config_of({"quantization_config": config})
    for extra, words in (({"kv_cache_scheme": {"num_bits": 8, "type": "float"}}, "KV cache"),
                         ({"transform_config": {"config_groups": {"r": {}}}}, "transforms")):
        with pytest.raises(FailedPrecondition, match=words):
            quant_config_of({"quantization_config": {**COMPRESSED_CONFIG, **extra}})
    assert quant_config_of({"quantization_config": {
        **COMPRESSED_CONFIG, "kv_cache_scheme": None, "transform_config": {}}}).algo == "W4A16"
    with pytest.raises(FailedPrecondition, match="awq .GEMM. and compressed-tensors"):
        quant_config_of({"quantization_config": {"quant_method": "gptq"}})
    with pytest.raises(FailedPrecondition, match="4-bit GEMM"):
        quant_config_of({"quantization_config": {**AWQ_CONFIG, "version": "gemv"}})
    assert quant_config_of({}) is None


@pytest.mark.parametrize("writer, config, tensors, words", [
    (awq_gemm, lambda q: "awq", None, "quantization_config must be an object"),
    (awq_gemm, lambda q: {**q, "group_size": "32"}, None, "group_size must be a whole number"),
    (compressed_int4, lambda q: {**q, "config_groups": [q["config_groups"]["group_0"]]}, None,
     "config_groups must be an object"),
    (compressed_int4, lambda q: group_of(q, group_size=None), None,
     "weights.group_size must be a whole number"),
    (awq_gemm, None, lambda t: t.update({Q + "qweight": t[Q + "qweight"].float()}),
     r"q_proj.qweight must be int32 of shape \[64, 8\].*it is float32"),
    (awq_gemm, None, lambda t: t.update({Q + "scales": t[Q + "scales"][:, :-1]}),
     r"q_proj.scales must be .* of shape \[2, 64\]"),
    (compressed_int4, None, lambda t: t.update({Q + "weight_scale": t[Q + "weight_scale"][:, 0]}),
     r"q_proj.weight_scale must be .* of shape \[64, 2\].*it is float16 \[64\]"),
    (compressed_int4, None,
     lambda t: t.update({Q + "weight_zero_point": t[Q + "weight_zero_point"].float()}),
     "q_proj.weight_zero_point must be int32/int8"),
    (compressed_int4, lambda q: group_of(q, group_size=64), None,
     r"q_proj.weight_scale must be .* of shape \[64, 1\]"),
])
def test_a_malformed_prequantized_checkpoint_is_refused_naming_what_is_wrong(
        source, tmp_path, writer, config, tensors, words):
    """A config entry of the wrong type, or a stored tensor of another dtype or shape than its
    format's, is an InvalidRequest that names it: never a Python error from the unpacking, and
    never a float tensor's bits read as int4 codes (a float qweight used to load)."""
    base = AWQ_CONFIG if writer is awq_gemm else COMPRESSED_CONFIG
    folder, _ = quantized_checkpoint(source, tmp_path / "q", writer, base)
    with pytest.raises(InvalidRequest, match=words):
        load_model(edited_copy(folder, tmp_path / "edited", config, tensors))


def test_a_malformed_fp8_checkpoint_is_refused_naming_what_is_wrong(source, tmp_path):
    folder = compressed_fp8_checkpoint(source, tmp_path / "fp8", "channel")
    down = "model.layers.0.mlp.down_proj."
    for name, edit in (
            ("weight_scale", lambda t: t.update({down + name: t[down + name][:5]})),
            ("weight", lambda t: t.update({down + name: t[down + name][:, :-8]}))):
        with pytest.raises(InvalidRequest, match=f"down_proj.{name} must be .* of shape"):
            load_model(edited_copy(folder, tmp_path / name, tensors=edit))
