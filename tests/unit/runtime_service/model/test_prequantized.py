"""Pre-quantized HF checkpoints (AutoAWQ GEMM, compressed-tensors pack-quantized int4 and
float-quantized FP8) are served as they are stored: greedy tokens equal transformers' on the
same weights, split engines are slices of the stored tensors, and schemes Kiln would serve as
another function are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from builder_service.builder import EngineBuilder
from builder_service.reshard import KilnShards
from builder_service.settings import BuildSpec
from builder_service.sources import SourceResolver
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.format.engine_config import EngineConfig, Mapping, QuantConfig
from runtime_service.model.layers.quantize import dequantize_int4, quantize_int4, unpack_int4
from runtime_service.model.loader import load_model
from runtime_service.model.prequantized import AWQ_ORDER, quant_config_of
from runtime_service.store import open_store
from support.compressed_checkpoints import compressed_fp8_checkpoint
from support.random_llama import hf_greedy, make_random_llama

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


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("hf") / "llama", num_hidden_layers=2)


def kiln_greedy(folder, tokens=8):
    executor = Executor.from_folder(folder, ExecutorOptions(load_tokenizer=False,
                                                            kv_max_tokens=256)).start()
    try:
        stream = executor.submit(Request("r", PROMPT, SamplingParams(max_new_tokens=tokens,
                                                                     ignore_eos=True)))
        return [t for o in stream for t in o.new_token_ids]
    finally:
        executor.shutdown()


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


def built_engine(folder: Path, work: Path, tp: int = 1, pp: int = 1, quant="NONE") -> Path:
    """`folder` built by the builder as it is quantized (by default no quant setting asked
    for; else `quant`, the algorithm it already has, by name)."""
    builder = EngineBuilder(open_store(str(work / "store")), SourceResolver(work / "b", None),
                            work / "b")
    outcome = builder.build(BuildSpec(source=str(folder), dtype="float32",
                                      mapping=Mapping(tp, pp), quant=QuantConfig(
                                          algo=quant, group_size=GROUP)), lambda _: None)
    return work / "store" / "engines" / outcome.engine.engine_key


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


def _edited(folder: Path, out: Path, config=None, tensors=None) -> Path:
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


def _group_of(q, **weights):
    group = dict(q["config_groups"]["group_0"])
    group["weights"] = {**group["weights"], **weights}
    return {**q, "config_groups": {"group_0": group}}


@pytest.mark.parametrize("writer, config, tensors, words", [
    (awq_gemm, lambda q: "awq", None, "quantization_config must be an object"),
    (awq_gemm, lambda q: {**q, "group_size": "32"}, None, "group_size must be a whole number"),
    (compressed_int4, lambda q: {**q, "config_groups": [q["config_groups"]["group_0"]]}, None,
     "config_groups must be an object"),
    (compressed_int4, lambda q: _group_of(q, group_size=None), None,
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
    (compressed_int4, lambda q: _group_of(q, group_size=64), None,
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
        load_model(_edited(folder, tmp_path / "edited", config, tensors))


def test_a_malformed_fp8_checkpoint_is_refused_naming_what_is_wrong(source, tmp_path):
    folder = compressed_fp8_checkpoint(source, tmp_path / "fp8", "channel")
    down = "model.layers.0.mlp.down_proj."
    for name, edit in (
            ("weight_scale", lambda t: t.update({down + name: t[down + name][:5]})),
            ("weight", lambda t: t.update({down + name: t[down + name][:, :-8]}))):
        with pytest.raises(InvalidRequest, match=f"down_proj.{name} must be .* of shape"):
            load_model(_edited(folder, tmp_path / name, tensors=edit))


def _refused_by_the_build(folder: Path, work: Path, words: str) -> None:
    """The builder refuses `folder` with an InvalidRequest matching `words`, and neither the
    store nor the work dir keeps anything of the build."""
    with pytest.raises(InvalidRequest, match=words):
        built_engine(folder, work)
    assert open_store(str(work / "store")).list_engine_keys() == []
    builds = work / "b" / "builds"
    assert not builds.exists() or not any(builds.iterdir())


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
    edited = _edited(folder, tmp_path / "edited", tensors=poison)
    _refused_by_the_build(edited, tmp_path / "work",
                          rf"{name.replace('.', '[.]')} holds NaN or inf at \[\d+(, \d+)?\] "
                          r"\(1 of \d+\)")


def test_a_zero_scale_is_served_as_an_all_zero_group(source, tmp_path):
    """Zero is a finite scale (an all-zero group's, in a quantizer that does not clamp it): it
    loads, and its group dequantizes to zeros."""
    folder, _ = quantized_checkpoint(source, tmp_path / "q", awq_gemm, AWQ_CONFIG)
    edited = _edited(folder, tmp_path / "edited",
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
    int8 = _edited(folder, tmp_path / "int8", tensors=_int8_zero_points)
    assert load_file(str(int8 / "model.safetensors"))[Q + "weight_zero_point"].dtype == torch.int8
    assert kiln_greedy(int8) == hf_greedy(float_folder, PROMPT, 8)

    def out_of_range(stored):
        _int8_zero_points(stored)
        stored[Q + "weight_zero_point"][5, 1] = 100
    _refused_by_the_build(_edited(folder, tmp_path / "oob", tensors=out_of_range),
                          tmp_path / "work", r"q_proj[.]weight_zero_point holds 100 .*-8[.][.]7")


def test_an_asymmetric_compressed_linear_without_its_zero_point_is_refused(source, tmp_path):
    """Read as symmetric (zero point 8) it served another function; compressed-tensors writes a
    zero point for every linear of an asymmetric scheme, so one missing is an error."""
    folder, _ = quantized_checkpoint(source, tmp_path / "q", compressed_int4, COMPRESSED_CONFIG)
    edited = _edited(folder, tmp_path / "edited",
                     tensors=lambda t: t.pop(Q + "weight_zero_point"))
    _refused_by_the_build(edited, tmp_path / "work",
                          r"q_proj[.]weight_zero_point is missing \(1 linear.*symmetric: false")
    # a config that says symmetric while the other linears store zero points: refused too
    mixed = _edited(folder, tmp_path / "mixed", config=lambda q: _group_of(q, symmetric=True),
                    tensors=lambda t: t.pop(Q + "weight_zero_point"))
    _refused_by_the_build(mixed, tmp_path / "work2",
                          r"q_proj[.]weight_zero_point is missing: .*asymmetric")


def test_an_asymmetric_compressed_checkpoint_without_any_zero_point_is_refused(source,
                                                                            tmp_path):
    """`symmetric: false` with no zero point stored anywhere: read as symmetric it would serve
    another function than the checkpoint states."""
    folder, _ = quantized_checkpoint(source, tmp_path / "q", compressed_int4, COMPRESSED_CONFIG)

    def drop_zero_points(stored):
        for name in [n for n in stored if n.endswith("weight_zero_point")]:
            stored.pop(name)
    edited = _edited(folder, tmp_path / "edited", tensors=drop_zero_points)
    _refused_by_the_build(edited, tmp_path / "work",
                          r"weight_zero_point is missing \(14 linear.*symmetric: false")


@pytest.mark.parametrize("writer, config", [(awq_gemm, AWQ_CONFIG),
                                            (compressed_int4, COMPRESSED_CONFIG)])
def test_a_linear_stored_both_as_float_and_packed_is_refused(writer, config, source, tmp_path):
    """It used to serve the packed form and ignore the float one without a word."""
    folder, _ = quantized_checkpoint(source, tmp_path / "q", writer, config)

    def add_float_weight(stored):
        stored[Q + "weight"] = torch.zeros(64, 64)
    edited = _edited(folder, tmp_path / "edited", tensors=add_float_weight)
    _refused_by_the_build(edited, tmp_path / "work",
                          r"q_proj is stored both as a float weight and as (qweight|weight_packed)")
