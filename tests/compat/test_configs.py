"""The HLAPI's config objects: fields it documents, options Kiln implements, TensorRT-only
options accepted with a warning that names them, and unbuilt ones refused. No services."""

from __future__ import annotations

import io
import json
import warnings

import pytest

from kiln.build_config import NoEffectWarning
from kiln.errors import FailedPrecondition, InvalidArgument


def test_build_config_has_the_peer_fields_and_from_dict():
    from kiln.hlapi.llm import BuildConfig
    config = BuildConfig.from_dict({"max_input_len": 64, "max_output_len": 32,
                                    "max_beam_width": 4, "gather_context_logits": True,
                                    "plugin_config": {"streamingllm": True}})
    assert (config.max_beam_width, config.seq_len_limit) == (4, 96)
    assert config.plugin_config.streamingllm
    assert BuildConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidArgument, match="no field"):
        BuildConfig.from_dict({"max_input_length": 64})


def test_compiler_only_options_warn_naming_each_one():
    from kiln.hlapi.llm import BuildConfig
    config = BuildConfig(strongly_typed=True, builder_opt=3)
    config.plugin_config.gemm_plugin = "float16"
    with pytest.warns(NoEffectWarning) as caught:
        config.check()
    messages = " ".join(str(w.message) for w in caught)
    for name in ("strongly_typed", "builder_opt", "gemm_plugin"):
        assert name in messages
    assert "no effect in Kiln" in messages
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BuildConfig().check()                     # defaults say nothing


@pytest.mark.parametrize("field, value", [("max_draft_len", 4), ("lora_config", object()),
                                          ("max_prompt_embedding_table_size", 16)])
def test_unbuilt_build_features_are_refused(field, value):
    from kiln.hlapi.llm import BuildConfig
    config = BuildConfig()
    setattr(config, field, value)
    with pytest.raises(InvalidArgument, match=field):
        config.check()


def test_turning_off_the_paged_kv_cache_is_refused():
    from kiln.hlapi.llm import BuildConfig
    config = BuildConfig()
    config.plugin_config.paged_kv_cache = False
    with pytest.raises(InvalidArgument, match="paged_kv_cache"):
        config.check()


def test_parallel_config_devices_and_is_multi_gpu():
    from kiln.hlapi.llm import ParallelConfig
    config = ParallelConfig(tp_size=2)
    assert config.devices == [0, 1] and config.is_multi_gpu
    config.devices = [2, 3]
    assert config.devices == [2, 3]
    with pytest.raises(InvalidArgument, match="devices"):
        config.devices = [0]
    assert not ParallelConfig().is_multi_gpu


def write_checkpoint(folder, tp_size, pp_size=1):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(
        {"format": "kiln-checkpoint", "format_version": 1, "model": {},
         "mapping": {"tp_size": tp_size, "pp_size": pp_size}}))
    return folder


def test_a_tp2_checkpoint_is_built_and_served_with_tp2(tmp_path):
    from kiln.engine_build import build_settings
    from kiln.hlapi.llm import ModelConfig, ModelFormatKind
    from kiln.v1 import runtime_pb2
    config = ModelConfig(str(write_checkpoint(tmp_path / "ckpt", 2)))
    assert config.model_format is ModelFormatKind.TLLM_CKPT
    assert (config.parallel_config.tp_size, config.parallel_config.world_size) == (2, 2)
    settings = build_settings(config, runtime_pb2.ServerInfo(device="cpu"))
    assert settings.parallel.tp_size == 2


def test_a_split_that_disagrees_with_the_checkpoint_is_refused(tmp_path):
    from kiln.hlapi.llm import ModelConfig, ParallelConfig
    with pytest.raises(InvalidArgument, match="tp_size=4"):
        ModelConfig(str(write_checkpoint(tmp_path / "ckpt", 2)),
                    parallel_config=ParallelConfig(tp_size=4))


def test_model_config_names_the_format_and_refuses_an_in_memory_model(tmp_path):
    from kiln.hlapi.llm import ModelConfig, ModelFormatKind
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert ModelConfig(str(tmp_path)).model_format is ModelFormatKind.HF
    with pytest.raises(InvalidArgument, match="model"):
        ModelConfig(str(tmp_path), model="llama-7b")


@pytest.mark.parametrize("raw", [b"[" * 100000 + b"]" * 100000, b"[1]", b"\xff\xfe",
                                 b'{"format": "kiln-checkpoint", "mapping": [2]}',
                                 b'{"format": "kiln-checkpoint", "mapping": {"tp_size": "2"}}',
                                 b'{"format": "kiln-engine"}'])
def test_a_malformed_local_folder_leaves_the_verdict_to_the_builder(tmp_path, raw):
    """ModelConfig reads a local folder's config.json leniently: a malformed one raises nothing
    in the caller's process (the builder reads the same folder and names what is wrong)."""
    from kiln.engine_build import local_engine_key
    from kiln.hlapi.llm import ModelConfig
    (tmp_path / "config.json").write_bytes(raw)
    (tmp_path / "manifest.json").write_bytes(b"[" * 100000)
    config = ModelConfig(str(tmp_path))
    assert config.parallel_config.tp_size == 1
    assert local_engine_key(str(tmp_path)) is None


def test_model_config_max_beam_width_reaches_the_build_either_way(tmp_path):
    from kiln.hlapi.llm import ModelConfig
    assert ModelConfig(str(tmp_path), max_beam_width=4).beam_width_limit == 4
    config = ModelConfig(str(tmp_path))
    config.build_config.max_beam_width = 3
    assert config.beam_width_limit == 3


def test_quant_config_fields_asdict_and_quant_mode():
    from kiln.hlapi.llm import QuantAlgo, QuantConfig
    from kiln.quantization import QuantMode
    config = QuantConfig(QuantAlgo.W4A16_AWQ, QuantAlgo.INT8)
    data = config.asdict()
    assert data["group_size"] == 128 and data["exclude_modules"] is None
    assert {"smoothquant_val", "has_zero_point", "pre_quant_scale"} <= set(data)
    assert QuantMode.INT4_WEIGHTS in config.quant_mode
    assert QuantMode.INT8_KV_CACHE in config.quant_mode


def test_quant_mode_answers_the_hlapi_questions_for_each_algorithm():
    """What the peer's own quantization tests ask before building (`quant_mode.has_any_quant()`),
    with each algorithm's answers as Kiln builds it."""
    from kiln.hlapi.llm import QuantAlgo, QuantConfig
    from kiln.quantization import QuantMode

    def mode(algo=None, kv=None):
        return QuantConfig(algo, kv).quant_mode

    assert not mode().has_any_quant() and not QuantConfig().requires_calibration
    awq = mode(QuantAlgo.W4A16_AWQ)
    assert awq.has_any_quant() and awq.is_int4_weight_only_per_group() and awq.is_weight_only()
    assert QuantConfig(QuantAlgo.W4A16_AWQ).requires_calibration
    int8 = mode(QuantAlgo.W8A16)
    assert int8.is_int8_weight_only() and not int8.is_int4_weight_only()
    fp8 = mode(QuantAlgo.FP8, QuantAlgo.FP8)
    assert fp8.has_any_quant() and fp8.has_fp8_qdq() and fp8.has_fp8_kv_cache()
    assert fp8.has_per_token_dynamic_scaling() and not fp8.has_act_static_scaling()
    assert not fp8.is_weight_only() and not QuantConfig(QuantAlgo.FP8).requires_calibration
    kv_only = mode(None, QuantAlgo.INT8)
    assert kv_only.has_any_quant() and not kv_only.has_any_quant(exclude_kv_cache=True)
    assert kv_only.has_kv_cache_quant() and kv_only.has_int8_kv_cache()
    assert QuantMode.NONE.set_fp8_kv_cache().has_fp8_kv_cache()
    assert QuantMode.from_quant_algo(QuantAlgo.W4A16_AWQ, QuantAlgo.INT8) == \
        mode(QuantAlgo.W4A16_AWQ, QuantAlgo.INT8)


@pytest.mark.parametrize("fields, refused", [
    ({"smoothquant_val": 0.5, "quant_algo": "W8A16"}, "smoothquant_val"),
    ({"pre_quant_scale": True}, "pre_quant_scale applies to W4A16_AWQ"),
    ({"pre_quant_scale": True, "quant_algo": "W4A16"}, "pre_quant_scale applies"),
    ({"has_zero_point": True, "quant_algo": "FP8"}, "has_zero_point applies to the int4"),
    # what Kiln's int4 engines are: zero points in every group, AWQ's scales folded in
    ({"has_zero_point": True, "quant_algo": "W4A16"}, None),
    ({"has_zero_point": True, "pre_quant_scale": True, "quant_algo": "W4A16_AWQ"}, None),
])
def test_quant_flags_are_taken_where_they_describe_the_engine_and_refused_elsewhere(
        tmp_path, fields, refused):
    from kiln.engine_build import check_capabilities
    from kiln.hlapi.llm import ModelConfig, QuantAlgo
    from kiln.v1 import runtime_pb2
    config = ModelConfig(str(tmp_path))
    for name, value in fields.items():
        setattr(config.quant_config, name, QuantAlgo[value] if name == "quant_algo" else value)
    info = runtime_pb2.ServerInfo(quant_algos=["NONE", "W4A16", "W4A16_AWQ", "W8A16", "FP8"],
                                  max_world_size=1)
    if refused is None:
        check_capabilities(config, info)
    else:
        with pytest.raises(FailedPrecondition, match=refused):
            check_capabilities(config, info)


def test_exclude_modules_reach_the_build_settings(tmp_path):
    from kiln.engine_build import build_settings, check_capabilities
    from kiln.hlapi.llm import ModelConfig, QuantAlgo
    from kiln.v1 import runtime_pb2
    config = ModelConfig(str(tmp_path))
    config.quant_config.quant_algo = QuantAlgo.FP8
    config.quant_config.exclude_modules = ["lm_head", "*.mlp.down_proj"]
    info = runtime_pb2.ServerInfo(quant_algos=["NONE", "FP8"], max_world_size=1, device="cpu")
    check_capabilities(config, info)
    assert list(build_settings(config, info).quant.exclude_modules) == \
        ["lm_head", "*.mlp.down_proj"]


def test_devices_other_than_the_runtime_placement_are_refused(tmp_path):
    from kiln.hlapi import LLM, ModelConfig
    config = ModelConfig(str(tmp_path))
    config.parallel_config.devices = [1]
    with pytest.raises(InvalidArgument, match="CUDA_VISIBLE_DEVICES"):
        LLM(config)


@pytest.mark.parametrize("options, match", [
    ({"normalize_log_probs": False}, "normalize_log_probs"),
    ({"context_chunking_policy": "EQUAL_PROGRESS"}, "EQUAL_PROGRESS"),
    ({"embedding_parallel_mode": "SIDEWAYS"}, "embedding_parallel_mode"),
])
def test_llm_options_that_change_results_are_refused_before_anything_starts(tmp_path, options,
                                                                              match):
    from kiln.hlapi import LLM, ModelConfig
    with pytest.raises(InvalidArgument, match=match):
        LLM(ModelConfig(str(tmp_path)), **options)


def test_tokenizer_base_subclass_and_factory():
    from kiln.hlapi.tokenizer import TokenizerBase, TransformersTokenizer, tokenizer_factory

    class Words(TokenizerBase):
        eos_token_id = 0

        def encode(self, text, *args, **kwargs):
            return [len(w) for w in text.split()]

        def decode(self, token_ids, *args, **kwargs):
            return " ".join("x" * t for t in token_ids)

    words = Words()
    assert tokenizer_factory(words) is words
    assert words.batch_decode([[1, 2]]) == ["x xx"]
    assert words.batch_encode_plus(["a bb"]) == {"input_ids": [[1, 2]]}

    class FakeHf:
        eos_token_id, pad_token_id = 2, None

        def encode(self, text, *args, **kwargs):
            return [1]

        def decode(self, ids, *args, **kwargs):
            return "a"
    wrapped = tokenizer_factory(FakeHf())
    assert isinstance(wrapped, TransformersTokenizer) and wrapped.eos_token_id == 2
    with pytest.raises(TypeError):
        tokenizer_factory(42)


def test_utils_helpers(tmp_path):
    from kiln.hlapi.utils import (GpuArch, file_with_glob_exists, file_with_suffix_exists,
                                  get_device_count, print_colored)
    (tmp_path / "rank0.safetensors").write_bytes(b"")
    assert file_with_suffix_exists(tmp_path, ".safetensors")
    assert not file_with_glob_exists(tmp_path, "*.engine")
    out = io.StringIO()
    print_colored("hi", "green", writer=out)
    assert out.getvalue().startswith("\033[0;32mhi")
    assert get_device_count() >= 0
    assert GpuArch.is_post_volta() == (get_device_count() > 0 and GpuArch.get_arch() >= 7)


def test_embedding_layout_options_warn_that_they_have_no_effect():
    from kiln.llm_options import check_embedding_options
    with pytest.warns(NoEffectWarning) as caught:
        check_embedding_options("NONE", True)
    messages = " ".join(str(w.message) for w in caught)
    assert "embedding_parallel_mode" in messages and "share_embedding_table" in messages
