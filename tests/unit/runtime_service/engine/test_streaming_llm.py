"""StreamingLLM: sink tokens plus a sliding window, rotary positions within the cache."""

from __future__ import annotations

import pytest
import torch

from runtime_service.errors import FailedPrecondition
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import FinishReason, Request, SamplingParams
from support.random_llama import make_random_llama, random_prompts

VOCAB = 320


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # max_position_embeddings 64: a plain engine refuses anything longer.
    return make_random_llama(tmp_path_factory.mktemp("stream"), vocab_size=VOCAB,
                             max_position_embeddings=64)


def _streaming(folder, window, sink=4, block_size=4, **extra):
    return Executor.from_folder(folder, ExecutorOptions(
        block_size=block_size, max_attention_window=window, sink_token_length=sink,
        streaming_llm=True, **extra)).start()


def test_window_larger_than_the_stream_equals_plain_generation(folder):
    prompt = random_prompts([10], VOCAB, seed=2)[0]
    params = SamplingParams(max_new_tokens=30)
    plain = Executor.from_folder(folder, ExecutorOptions(block_size=4)).start()
    stream = _streaming(folder, window=48)
    try:
        expected = plain.generate([Request("p", prompt, params)])["p"]
        got = stream.generate([Request("s", prompt, params)])["s"]
    finally:
        plain.shutdown()
        stream.shutdown()
    assert got == expected


def test_stream_of_twenty_windows_runs_in_bounded_memory_past_max_seq_len(folder):
    window, sink, block = 16, 4, 4
    executor = _streaming(folder, window=window, sink=sink, block_size=block)
    bound = (sink // block + window // block + 1)          # blocks one sequence may hold
    try:
        prompt = random_prompts([8], VOCAB, seed=3)[0]
        stream = executor.submit(Request("long", prompt, SamplingParams(
            max_new_tokens=20 * window, temperature=1.0, seed=5)))
        held, count, last = [], 0, None
        for out in stream:
            count += len(out.new_token_ids)
            stats = executor.stats()
            held.append(stats.num_total_blocks - stats.num_free_blocks)
            last = out
        final = executor.stats()
    finally:
        executor.shutdown()
    assert count == 20 * window > executor.build.max_seq_len
    assert last.finish_reason is FinishReason.LENGTH
    assert max(held) <= bound
    assert final.num_free_blocks == final.num_total_blocks


def test_rotating_cached_keys_equals_rotating_at_the_shifted_position(folder):
    executor = _streaming(folder, window=16)
    executor.shutdown()
    runner = executor.runner
    rotary = next(iter(runner.model.layers.values())).attn.rotary
    k_cache = runner.kv_caches[0][0]
    heads, dim = k_cache.shape[2], k_cache.shape[3]
    keys = torch.randn(8, heads, dim)
    positions = torch.arange(20, 28)
    _, rotated = rotary(positions, keys.clone(), keys.clone())
    k_cache[2:4] = rotated.view(2, 4, heads, dim)
    runner.rotate_blocks([((2, 3), 12)])
    _, expected = rotary(positions - 12, keys.clone(), keys.clone())
    torch.testing.assert_close(k_cache[2:4].reshape(8, heads, dim), expected,
                               atol=1e-5, rtol=1e-5)


def test_sliding_window_refuses_beams_and_block_reuse(folder):
    executor = _streaming(folder, window=16)
    try:
        with pytest.raises(FailedPrecondition, match="sliding attention window"):
            executor.submit(Request("b", [1, 2, 3], SamplingParams(beam_width=2)))
    finally:
        executor.shutdown()
    with pytest.raises(Exception, match="block reuse"):
        _streaming(folder, window=16, enable_block_reuse=True)
