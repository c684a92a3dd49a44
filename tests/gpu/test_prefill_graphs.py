"""Prefill CUDA graphs: a lone prompt of up to the largest bucket replays a captured graph and
gives what the eager prefill gives, with context before it (a reused prefix) or without, while
prompts that ask for prompt logits, longer prompts and batched prefills stay eager.

float32, so the two paths differ only by summation order in padded GEMMs (~1e-6): tokens are
compared exactly and log-probabilities to 1e-3."""

from __future__ import annotations

import pytest
import torch

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from support.random_llama import make_random_llama, random_prompts

pytestmark = pytest.mark.gpu

SHAPE = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
             num_hidden_layers=3, vocab_size=512)


def _executor(folder, **options):
    return Executor.from_folder(folder, ExecutorOptions(
        device="cuda", dtype="float32", block_size=16, max_num_tokens=256, **options)).start()


def _params(**extra):
    return SamplingParams(max_new_tokens=6, min_new_tokens=6, end_id=-1, logprobs=True, **extra)


def _one_at_a_time(executor, prompts, **extra):
    """(tokens, logprobs, prompt logprobs) of each prompt, submitted after the previous ended."""
    results = []
    for i, prompt in enumerate(prompts):
        outputs = list(executor.submit(Request(f"p{i}", prompt, _params(**extra))))
        results.append(([t for o in outputs for t in o.new_token_ids],
                        [lp for o in outputs for lp in o.new_logprobs],
                        outputs[0].prompt_logprobs))
    return results


def _count_replays(executor) -> list[int]:
    """Token counts of the prefill graph replays from now on."""
    counts = []
    graphs = executor.runner.prefill_graphs
    run = graphs.run
    graphs.run = lambda inputs, *rest: counts.append(len(inputs.token_ids)) or run(inputs, *rest)
    return counts


def _assert_same(results, reference):
    for (tokens, logprobs, prompt_lps), (ref_tokens, ref_logprobs, ref_prompt_lps) in zip(
            results, reference):
        assert tokens == ref_tokens
        assert logprobs == pytest.approx(ref_logprobs, abs=1e-3)
        if ref_prompt_lps:
            assert prompt_lps == pytest.approx(ref_prompt_lps, abs=1e-3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("prefill_graphs"), **SHAPE)


def test_lone_prompts_replay_the_smallest_bucket_and_match_eager(folder):
    lengths = (1, 7, 16, 17, 63, 100, 128, 200)
    prompts = random_prompts(lengths, vocab_size=512)
    graphed = _executor(folder, cuda_graph_max_prefill_tokens=128)
    try:
        assert graphed.runner.prefill_graphs.buckets == [16, 32, 64, 128]
        counts = _count_replays(graphed)
        torch.cuda.synchronize()
        reserved = torch.cuda.memory_reserved()
        results = _one_at_a_time(graphed, prompts)
        torch.cuda.synchronize()
        assert torch.cuda.memory_reserved() == reserved
        stats = graphed.stats()
        assert stats.num_free_blocks == stats.num_total_blocks
    finally:
        graphed.shutdown()
    assert counts == [n for n in lengths if n <= 128]      # 200 tokens prefill eagerly
    eager = _executor(folder, cuda_graph_max_prefill_tokens=0)
    try:
        assert eager.runner.prefill_graphs is None
        _assert_same(results, _one_at_a_time(eager, prompts))
    finally:
        eager.shutdown()


def test_a_reused_prefix_prefills_the_rest_through_a_graph(folder):
    """With block reuse, the second prompt's first 48 tokens (3 blocks) come from the cache, so
    its graph attends over context it did not compute: positions, slots and the block table
    must all start after the prefix."""
    [shared] = random_prompts((48,), vocab_size=512, seed=5)
    tails = random_prompts((20, 9), vocab_size=512, seed=6)
    prompts = [shared + tails[0], shared + tails[1]]
    graphed = _executor(folder, enable_block_reuse=True)
    try:
        counts = _count_replays(graphed)
        results = _one_at_a_time(graphed, prompts)
    finally:
        graphed.shutdown()
    assert counts == [68, 9]
    eager = _executor(folder, enable_block_reuse=True, cuda_graph_max_prefill_tokens=0)
    try:
        _assert_same(results, _one_at_a_time(eager, prompts))
    finally:
        eager.shutdown()


def test_prompts_that_ask_for_prompt_logprobs_prefill_eagerly(folder):
    """The graph keeps only the last row's logits, so a prompt that wants them all runs eagerly
    and gets them."""
    prompts = random_prompts((30, 12), vocab_size=512, seed=7)
    graphed = _executor(folder)
    try:
        counts = _count_replays(graphed)
        scored = _one_at_a_time(graphed, prompts, prompt_logprobs=True)
    finally:
        graphed.shutdown()
    assert counts == []
    assert [len(prompt_lps) for _, _, prompt_lps in scored] == [29, 11]
    eager = _executor(folder, cuda_graph_max_prefill_tokens=0)
    try:
        _assert_same(scored, _one_at_a_time(eager, prompts, prompt_logprobs=True))
    finally:
        eager.shutdown()
