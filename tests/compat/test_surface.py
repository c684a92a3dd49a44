"""The HLAPI's module paths, names, positional orders and defaults, as its code documents them
(tensorrt_llm.hlapi at f430a4b, 2024-05-28). No services: these run in milliseconds."""

from __future__ import annotations

import inspect
import sys

import pytest

from kiln.errors import InvalidArgument


def test_the_hlapi_module_paths_exist_with_their_names():
    import kiln.executor as executor
    import kiln.hlapi as hlapi
    import kiln.hlapi.llm as llm
    import kiln.hlapi.tokenizer as tokenizer
    import kiln.hlapi.utils as utils
    for name in ("LLM", "ModelConfig", "ParallelConfig", "StreamingLLMParam", "KvCacheConfig",
                 "CapacitySchedulerPolicy", "BuildConfig", "QuantConfig", "QuantAlgo",
                 "SamplingConfig", "OutputConfig", "GenerationOutput", "GenerationResult",
                 "TokenizerBase", "TransformersTokenizer", "GpuArch", "get_device_count",
                 "print_colored", "file_with_glob_exists", "file_with_suffix_exists"):
        assert hasattr(llm, name), name
    for name in ("LLM", "ModelConfig", "SamplingConfig", "TokenizerBase", "KvCacheConfig"):
        assert getattr(hlapi, name) is getattr(llm, name)
    assert tokenizer.tokenizer_factory(None) is None
    assert utils.SamplingConfig is llm.SamplingConfig
    assert executor.GenerationResult is llm.GenerationResult
    assert issubclass(executor.GenerationResult, utils.GenerationOutput)


def test_importing_the_hlapi_leaves_torch_out():
    import subprocess
    code = ("import sys, kiln.hlapi, kiln.hlapi.llm, kiln.executor; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def positional(function) -> list[str]:
    return [p.name for p in inspect.signature(function).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]


def test_generate_and_generate_async_take_the_peer_positional_order():
    from kiln.hlapi import LLM
    assert positional(LLM.generate) == ["prompts", "sampling_config", "output_config",
                                        "bad_words", "stop_words"]
    assert positional(LLM.generate_async) == ["prompt", "sampling_config", "output_config",
                                              "streaming", "bad_words", "stop_words"]
    assert positional(LLM.__init__) == ["config"]       # everything else is a keyword


def test_llm_takes_the_peer_keywords_and_the_older_readme_spellings():
    from kiln.hlapi import LLM
    keywords = set(inspect.signature(LLM.__init__).parameters)
    assert {"tokenizer", "kv_cache_config", "streaming_llm", "async_engine_tmp_dir",
            "normalize_log_probs", "enable_chunked_context", "capacity_scheduling_policy",
            "context_chunking_policy", "embedding_parallel_mode", "share_embedding_table",
            "async_mode", "enable_streaming_llm"} <= keywords


def test_sampling_config_starts_with_end_pad_and_max_new_tokens_and_defaults_to_none():
    from kiln.hlapi import SamplingConfig
    config = SamplingConfig(2, 0, 10)
    assert (config.end_id, config.pad_id, config.max_new_tokens) == (2, 0, 10)
    fresh = SamplingConfig()
    for name in ("end_id", "pad_id", "max_new_tokens", "top_k", "top_p", "top_p_min",
                 "top_p_reset_ids", "top_p_decay", "random_seed", "temperature", "min_length",
                 "beam_search_diversity_rate", "repetition_penalty", "presence_penalty",
                 "frequency_penalty", "length_penalty", "early_stopping"):
        assert getattr(fresh, name) is None, name
    assert fresh.beam_width == 1
    message, _, _ = fresh.to_proto()
    for name in ("max_new_tokens", "top_p", "repetition_penalty", "end_id", "top_p_decay",
                 "top_p_min", "top_p_reset_ids", "seed", "early_stopping"):
        assert not message.HasField(name), name          # unset: the engine's default


def test_sampling_config_extras_are_keyword_only():
    from kiln.hlapi import SamplingConfig
    with pytest.raises(TypeError):
        SamplingConfig(*([None] * 3), 1, *([None] * 14), 5)      # a 19th positional value


def test_sampling_config_reads_a_one_element_list_and_accepts_pad_id_minus_one():
    from kiln.hlapi import SamplingConfig
    config = SamplingConfig(top_k=[10], top_p=[0.92], pad_id=-1)
    assert (config.top_k, config.top_p, config.pad_id) == (10, 0.92, -1)
    with pytest.raises(InvalidArgument, match="top_k takes one value"):
        SamplingConfig(top_k=[1, 2])


def test_sampling_config_sends_the_top_p_decay_family_min_length_and_diversity():
    from kiln.hlapi import SamplingConfig
    config = SamplingConfig(top_p=0.9, top_p_min=0.1, top_p_reset_ids=7, top_p_decay=0.5,
                            min_length=3, beam_search_diversity_rate=0.5, early_stopping=5)
    message, _, _ = config.to_proto()
    assert message.top_p_decay == 0.5 and message.top_p_reset_ids == 7
    assert message.top_p_min == pytest.approx(0.1) and message.min_new_tokens == 3
    assert message.beam_search_diversity_rate == 0.5 and message.early_stopping_never
    with pytest.raises(InvalidArgument, match="top_p_decay"):
        SamplingConfig(top_p_decay=0.0)


def test_sampling_config_builds_at_import_time_in_a_parametrize():
    from kiln.hlapi import SamplingConfig
    cases = [SamplingConfig(max_new_tokens=6, temperature=0.5, beam_search_diversity_rate=0.5),
             SamplingConfig(max_new_tokens=6, top_k=10, top_p=0.92),
             SamplingConfig(max_new_tokens=8, length_penalty=1.0, presence_penalty=0.0,
                            repetition_penalty=1.0, min_length=5),
             SamplingConfig(max_new_tokens=6, early_stopping=5)]
    assert [c.max_new_tokens for c in cases] == [6, 6, 8, 6]


def test_output_config_fields_and_defaults():
    from kiln.hlapi import OutputConfig
    assert positional(OutputConfig.__init__) == [
        "return_log_probs", "return_context_logits", "return_generation_logits",
        "exclude_input_from_output"]
    assert OutputConfig() == OutputConfig(False, False, False, True)


def test_kv_cache_config_positional_order_is_the_peers():
    from kiln.hlapi import KvCacheConfig
    config = KvCacheConfig(100, 64, 4, 0.5, True)
    assert (config.max_tokens, config.max_attention_window, config.sink_token_length,
            config.free_gpu_memory_fraction, config.enable_block_reuse) == (100, 64, 4, 0.5, True)
    assert KvCacheConfig(max_new_tokens=128).max_new_tokens == 128   # the README's spelling


def test_streaming_llm_param_defaults_to_a_2048_window_and_is_hashable():
    from kiln.hlapi import StreamingLLMParam
    param = StreamingLLMParam()
    assert (param.max_attention_window_size, param.sink_token_length) == (2048, 4)
    assert len({StreamingLLMParam(), StreamingLLMParam()}) == 1
