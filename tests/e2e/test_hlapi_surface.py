"""Every example of HLAPI_SURFACE.md, through `import kiln` on the embedded default (real builder
and runtime processes, real gRPC on loopback). Outputs are checked against transformers' greedy
tokens on the same weights, not just for shape."""

from __future__ import annotations

import asyncio
import time

import pytest

from kiln import LLM, ModelConfig
from kiln.errors import Cancelled, FailedPrecondition, InvalidArgument
from kiln.hlapi import CapacitySchedulerPolicy, KvCacheConfig, SamplingConfig
from kiln.quantization import QuantAlgo
from support.kiln_servers import tiny_config
from support.random_llama import hf_greedy


def short(llm, n=6) -> SamplingConfig:
    config = llm.get_default_sampling_config()
    config.max_new_tokens = n
    config.ignore_eos = True
    return config


def test_basic_usage_generates_transformers_greedy_text(llm, tiny_model):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    outputs = llm.generate(["To tell a story"], sampling_config=short(llm))
    assert len(outputs) == 1
    output = outputs[0]
    ids = tokenizer("To tell a story")["input_ids"]
    assert output.token_ids == hf_greedy(tiny_model, ids, 6)
    assert output.text == tokenizer.decode(output.token_ids, skip_special_tokens=True)
    assert output.finished and output.finish_reason == "length"
    assert repr(output).startswith("GenerationResult(text=")


def test_token_ids_in_give_ids_out_with_empty_text(llm, tiny_model):
    batch = llm.generate([[32, 12]], sampling_config=short(llm))
    single = llm.generate([32, 12], sampling_config=short(llm))
    assert len(batch) == len(single) == 1
    assert batch[0].text == "" and single[0].text == ""
    assert batch[0].token_ids == single[0].token_ids == hf_greedy(tiny_model, [32, 12], 6)


def test_a_batch_keeps_prompt_order(llm, tiny_model):
    prompts = [[5, 6, 7], [100], [2000, 3000, 4000, 5000]]
    outputs = llm.generate(prompts, sampling_config=short(llm, 4))
    assert [o.token_ids for o in outputs] == [hf_greedy(tiny_model, p, 4) for p in prompts]


def test_async_streaming_yields_growing_output_in_order(llm, tiny_model):
    async def collect():
        seen = []
        async for output in llm.generate_async([9, 8, 7], streaming=True,
                                               sampling_config=short(llm, 5)):
            seen.append(list(output.token_ids))
        return seen

    seen = asyncio.run(collect())
    # one yield per chunk; a chunk may carry several tokens when the client fell behind (the
    # runtime folds them), so the counts grow but need not grow by one
    lengths = [len(s) for s in seen]
    assert lengths[0] >= 1 and lengths[-1] == 5
    assert all(a < b for a, b in zip(lengths, lengths[1:])), lengths
    assert all(s == seen[-1][:len(s)] for s in seen)
    assert seen[-1] == hf_greedy(tiny_model, [9, 8, 7], 5)


def test_non_streaming_async_iteration_yields_the_final_result_once(llm):
    async def collect():
        return [o.finished or o.finish_reason for o in
                [x async for x in llm.generate_async([3, 4], sampling_config=short(llm, 3))]]
    assert len(asyncio.run(collect())) == 1


def test_future_style_result_with_timeout_and_aresult(llm):
    generation = llm.generate_async([11, 12], sampling_config=short(llm, 1500))
    with pytest.raises(TimeoutError):
        generation.result(timeout=0.01)
    output = generation.result(timeout=120)
    assert len(output.token_ids) == 1500

    async def awaited():
        return await llm.generate_async([11, 12], sampling_config=short(llm, 4)).aresult()
    assert asyncio.run(awaited()).token_ids == output.token_ids[:4]

    slow = llm.generate_async([11, 12], sampling_config=short(llm, 1900))

    async def too_slow():
        return await slow.aresult(timeout=0.01)
    with pytest.raises(TimeoutError):
        asyncio.run(too_slow())
    cancel_and_wait_until_gone(llm, slow)


def cancel_and_wait_until_gone(llm, generation, timeout_s: float = 30) -> None:
    """Cancels a generation this test started and waits until the runtime no longer holds it,
    so no test leaves work behind on the module's shared runtime (issue 15, defect 7)."""
    generation.cancel()
    with pytest.raises(Cancelled):
        generation.result(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while llm.runtime.abort(generation.request_id):
        assert time.monotonic() < deadline, f"{generation.request_id} still runs"
        time.sleep(0.02)


def test_cancelling_a_generation_frees_its_kv_blocks(llm):
    """Checks only what this test owns: its request is gone and the blocks free before it
    started are free again (other tests may have left the cache in any state)."""
    before = llm.server_info()
    generation = llm.generate_async([1, 2, 3], streaming=True, sampling_config=short(llm, 1900))
    next(iter(generation))
    during = llm.server_info()
    assert during.kv_cache.num_free_blocks < before.kv_cache.num_free_blocks
    generation.cancel()
    with pytest.raises(Cancelled):
        generation.result(timeout=30)
    deadline = time.monotonic() + 10
    while llm.server_info().kv_cache.num_free_blocks < before.kv_cache.num_free_blocks:
        assert time.monotonic() < deadline, llm.server_info()
        time.sleep(0.02)


def test_default_sampling_config_comes_from_the_model(llm):
    config = llm.get_default_sampling_config()
    assert isinstance(config, SamplingConfig)
    assert config.end_id == 2 and config.beam_width == 1


def test_stop_words_end_the_output(llm, tiny_model):
    full = llm.generate([[40, 41]], sampling_config=short(llm, 8))[0].token_ids
    config = short(llm, 8)
    config.stop_words = [full[2:4]]
    stopped = llm.generate([[40, 41]], sampling_config=config)[0]
    assert stopped.token_ids == full[:4] and stopped.finish_reason == "stop"


def test_save_then_load_the_engine_without_a_rebuild(llm, tmp_path):
    engine_dir = llm.save(tmp_path / "engine")
    assert (engine_dir / "manifest.json").is_file()
    expected = llm.generate([[21, 22]], sampling_config=short(llm))[0].token_ids
    with LLM(ModelConfig(model_dir=str(engine_dir)), show_progress=False) as reloaded:
        assert reloaded.builder is None and reloaded.build_result is None
        assert reloaded.engine_key == llm.engine_key
        assert reloaded.generate([[21, 22]], sampling_config=short(llm))[0].token_ids == expected
    assert llm.save(engine_dir) == engine_dir           # over an existing folder, as the HLAPI
    assert (engine_dir / "manifest.json").is_file()
    other = ModelConfig(model_dir=str(engine_dir))      # served as built, or refused
    other.quant_config.quant_algo = QuantAlgo.W8A16
    with pytest.raises(InvalidArgument, match="was built with NONE"):
        LLM(other, show_progress=False)


def test_runtime_customization_and_a_custom_tokenizer(tiny_model):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(tiny_model))

    class CountingTokenizer:
        """A user's own tokenizer: the SDK must use it on both sides."""
        eos_token_id = 2
        pad_token_id = None

        def __init__(self):
            self.calls = 0

        def encode(self, text, add_special_tokens=True):
            self.calls += 1
            return hf(text, add_special_tokens=add_special_tokens)["input_ids"]

        def decode(self, ids, skip_special_tokens=True):
            self.calls += 1
            return "<" + hf.decode(ids, skip_special_tokens=skip_special_tokens) + ">"

    tokenizer = CountingTokenizer()
    with LLM(tiny_config(tiny_model), tokenizer=tokenizer,
             kv_cache_config=KvCacheConfig(max_new_tokens=128, free_gpu_memory_fraction=0.8),
             capacity_scheduling_policy=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT,
             show_progress=False) as llm:
        assert llm.server_info().scheduler_policy == "GUARANTEED_NO_EVICT"
        config = short(llm, 5)
        output = llm.generate(["Once upon a time"], sampling_config=config)[0]
        ids = hf("Once upon a time")["input_ids"]
        assert output.token_ids == hf_greedy(tiny_model, ids, 5)
        assert output.text == "<" + hf.decode(output.token_ids, skip_special_tokens=True) + ">"
        assert tokenizer.calls >= 2
        assert llm.generate([[5, 6]], sampling_config=config)[0].text == ""
        config.max_new_tokens = 129
        with pytest.raises(InvalidArgument, match="max_new_tokens"):
            llm.generate([[5, 6]], sampling_config=config)


@pytest.mark.parametrize("change, message", [
    (lambda c: (setattr(c.parallel_config, "tp_size", 4),
                setattr(c.parallel_config, "pp_size", 4)), "ranks"),
])
def test_settings_not_built_yet_are_refused_clearly(tiny_model, change, message):
    config = tiny_config(tiny_model)
    change(config)
    with pytest.raises(FailedPrecondition, match=message):
        LLM(config, show_progress=False)


def test_tensor_parallel_engine_is_served_on_two_ranks_through_the_sdk(tiny_model):
    config = tiny_config(tiny_model)
    config.parallel_config.tp_size = 2
    with LLM(config, show_progress=False) as llm:
        output = llm.generate([[5, 6, 7, 8]], sampling_config=short(llm, 5))[0]
        assert output.token_ids == hf_greedy(tiny_model, [5, 6, 7, 8], 5)


def test_w8a16_weights_with_an_int8_kv_cache_are_built_and_served_through_the_sdk(tiny_model):
    config = tiny_config(tiny_model)
    config.quant_config.quant_algo = QuantAlgo.W8A16
    config.quant_config.kv_cache_quant_algo = QuantAlgo.INT8
    config.quant_config.exclude_modules = ["lm_head", "model.layers.1.mlp.down_proj"]
    with LLM(config, show_progress=False) as llm:
        quant = llm.build_result.engine.settings.quant
        assert (quant.algo, quant.kv_cache_dtype) == ("W8A16", "int8")
        assert list(quant.exclude_modules) == ["lm_head", "model.layers.1.mlp.down_proj"]
        served = llm.runtime.model_info().settings.quant      # what the pod says it serves
        assert list(served.exclude_modules) == list(quant.exclude_modules)
        # the numbers are the unit tests' (test_quantized_build, test_kv_quant); here, the path
        output = llm.generate([[5, 6, 7, 8]], sampling_config=short(llm, 5))[0]
        assert len(output.token_ids) == 5


def test_quant_algo_kiln_does_not_build_is_a_failed_precondition(tiny_model):
    config = tiny_config(tiny_model)
    config.quant_config.quant_algo = QuantAlgo.W8A8_SQ_PER_CHANNEL
    with pytest.raises(FailedPrecondition, match="not built by Kiln"):
        LLM(config, show_progress=False)


def test_streaming_llm_generates_past_its_window_through_the_sdk(tiny_model):
    from kiln.hlapi import StreamingLLMParam
    param = StreamingLLMParam(max_attention_window_size=32, sink_token_length=4)
    with LLM(tiny_config(tiny_model), streaming_llm=param, show_progress=False) as llm:
        sampling_config = llm.get_default_sampling_config()
        sampling_config.max_new_tokens = 120
        sampling_config.ignore_eos = True
        output = llm.generate([[32, 12]], sampling_config=sampling_config)[0]
        info = llm.runtime.server_info()
    assert len(output.token_ids) == 120
    assert info.kv_cache.num_free_blocks == info.kv_cache.num_total_blocks


def test_block_reuse_serves_a_repeated_prompt_from_the_cache(tiny_model):
    from kiln.hlapi import KvCacheConfig
    prompt = list(range(100, 180))
    with LLM(tiny_config(tiny_model), kv_cache_config=KvCacheConfig(enable_block_reuse=True),
             show_progress=False) as llm:
        sampling_config = llm.get_default_sampling_config()
        sampling_config.max_new_tokens = 4
        first = llm.generate([prompt], sampling_config=sampling_config)[0]
        second = llm.generate([prompt], sampling_config=sampling_config)[0]
    assert second.token_ids == first.token_ids
    assert first.usage["cached_tokens"] == 0
    assert second.usage["cached_tokens"] == 64             # four full blocks of 16


def test_beam_search_example_returns_every_beam_as_transformers_ranks_them(tiny_model):
    import torch
    from transformers import LlamaForCausalLM
    with LLM(tiny_config(tiny_model, max_beam_width=4), show_progress=False) as llm:
        sampling_config = llm.get_default_sampling_config()
        sampling_config.beam_width = 4
        sampling_config.max_new_tokens = 4
        sampling_config.ignore_eos = True
        output = llm.generate([[32, 12]], sampling_config=sampling_config)[0]
    assert len(output.outputs) == 4 and len(output.token_ids) == 4 and len(output.text) == 4
    model = LlamaForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    with torch.no_grad():
        hf = model.generate(torch.tensor([[32, 12]]), num_beams=4, num_return_sequences=4,
                            max_new_tokens=4, min_new_tokens=4, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
    assert output.token_ids[0] == hf[0, 2:].tolist()
    assert sorted(output.token_ids) == sorted(hf[:, 2:].tolist())


def test_unchunked_context_and_priority_give_the_same_tokens(llm, tiny_model):
    sampling_config = llm.get_default_sampling_config()
    sampling_config.max_new_tokens = 6
    expected = llm.generate([[32, 12, 7]], sampling_config=sampling_config)[0].token_ids
    with LLM(tiny_config(tiny_model), enable_chunked_context=False, show_progress=False) as other:
        got = other.generate([[32, 12, 7]], sampling_config=sampling_config, priority=3)[0]
    assert got.token_ids == expected
    with pytest.raises(InvalidArgument, match="priority"):
        llm.generate([[1]], priority=10_000)


def test_awq_calibrates_on_a_local_file_outside_model_dir(tiny_model, tmp_path, monkeypatch):
    """The embedded builder may read model_dir and the calibration file it is given, by the
    path this process resolves (relative to its working folder, as the peer reads it)."""
    (tmp_path / "calib.txt").write_text("\n".join(f"Sentence {i} about foxes and dogs."
                                                  for i in range(64)))
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tiny_model)
    config.quant_config.quant_algo = QuantAlgo.W4A16_AWQ
    config.quant_config.group_size = 64
    config.quant_config.calib_data = "calib.txt"
    config.quant_config.calib_num_samples = 2
    config.quant_config.calib_seq_len = 32
    with LLM(config, show_progress=False) as llm:
        quant = llm.build_result.engine.settings.quant
        assert (quant.algo, quant.group_size, quant.calib_num_samples) == ("W4A16_AWQ", 64, 2)
        output = llm.generate([[5, 6, 7, 8]], sampling_config=short(llm, 3))[0]
        assert len(output.token_ids) == 3
