"""Prefill CUDA graphs: a lone prompt of up to the largest bucket replays a captured graph and
gives what the eager prefill gives, with context before it (a reused prefix, an earlier chunk)
or without, while prompts that ask for prompt logits and longer prompts stay eager.

float32, so the two paths differ only by summation order in padded GEMMs (~1e-6): tokens are
compared exactly and log-probabilities to 1e-3. One graphed and one eager executor serve every
test (each start captures graphs, seconds of the GPU tier)."""

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
        device="cuda", dtype="float32", block_size=16, max_num_tokens=256,
        enable_block_reuse=True, **options)).start()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("prefill_graphs"), **SHAPE)


@pytest.fixture(scope="module")
def graphed(folder):
    executor = _executor(folder)
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def eager(folder):
    executor = _executor(folder, cuda_graph_max_prefill_tokens=0)
    yield executor
    executor.shutdown()


@pytest.fixture
def replays(graphed, monkeypatch) -> list[int]:
    """Token counts of the graphed executor's prefill graph replays during the test."""
    counts = []
    run = graphed.runner.prefill_graphs.run
    monkeypatch.setattr(graphed.runner.prefill_graphs, "run", lambda inputs, *rest: (
        counts.append(len(inputs.token_ids)) or run(inputs, *rest)))
    return counts


def _params(**extra):
    return SamplingParams(max_new_tokens=6, min_new_tokens=6, end_id=-1, logprobs=True, **extra)


def _one_at_a_time(executor, prompts, tag, **extra):
    """(tokens, logprobs, prompt logprobs) of each prompt, submitted after the previous ended."""
    results = []
    for i, prompt in enumerate(prompts):
        outputs = list(executor.submit(Request(f"{tag}{i}", prompt, _params(**extra))))
        results.append(([t for o in outputs for t in o.new_token_ids],
                        [lp for o in outputs for lp in o.new_logprobs],
                        outputs[0].prompt_logprobs))
    return results


def _assert_same(results, reference):
    for (tokens, logprobs, prompt_lps), (ref_tokens, ref_logprobs, ref_prompt_lps) in zip(
            results, reference):
        assert tokens == ref_tokens
        assert logprobs == pytest.approx(ref_logprobs, abs=1e-3)
        assert prompt_lps == pytest.approx(ref_prompt_lps, abs=1e-3)


def test_lone_prompts_replay_the_smallest_bucket_and_match_eager(graphed, eager, replays):
    assert graphed.runner.prefill_graphs.buckets == [16, 32, 64, 128, 256]
    assert eager.runner.prefill_graphs is None
    # A 1-token prompt is a decode-shaped step (the decode graphs take it). 300 tokens exceed
    # max_num_tokens: 256 eagerly (that chunk does not finish the prompt), then the last 44
    # through a graph, over the 256 before them.
    lengths = (1, 7, 16, 17, 63, 100, 128, 256, 300)
    prompts = random_prompts(lengths, vocab_size=512, seed=3)
    results = _one_at_a_time(graphed, prompts, "lone")
    assert replays == [7, 16, 17, 63, 100, 128, 256, 44]
    # Once every path has run, other prompts of the same lengths allocate nothing (the first
    # pass grew the reserved memory by one 32 MiB segment on the H200, outside the graphs' pool).
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved()
    _one_at_a_time(graphed, random_prompts(lengths, vocab_size=512, seed=4), "again")
    torch.cuda.synchronize()
    assert torch.cuda.memory_reserved() == reserved
    assert replays[8:] == replays[:8]
    assert graphed.stats().num_live_requests == 0
    _assert_same(results, _one_at_a_time(eager, prompts, "lone"))


def test_a_reused_prefix_prefills_the_rest_through_a_graph(graphed, eager, replays):
    """The second prompt's first 48 tokens (3 blocks) come from the cache, so its graph attends
    over context it did not compute: positions, slots and the block table start after it."""
    [shared] = random_prompts((48,), vocab_size=512, seed=5)
    tails = random_prompts((20, 9), vocab_size=512, seed=6)
    prompts = [shared + tails[0], shared + tails[1]]
    results = _one_at_a_time(graphed, prompts, "prefix")
    assert replays == [68, 9]
    _assert_same(results, _one_at_a_time(eager, prompts, "prefix"))


def test_prompts_that_ask_for_prompt_logprobs_prefill_eagerly(graphed, eager, replays):
    """The graph keeps only the last row's logits, so a prompt that wants them all runs eagerly
    and gets them."""
    prompts = random_prompts((30, 12), vocab_size=512, seed=7)
    scored = _one_at_a_time(graphed, prompts, "scored", prompt_logprobs=True)
    assert replays == []
    assert [len(prompt_lps) for _, _, prompt_lps in scored] == [29, 11]
    _assert_same(scored, _one_at_a_time(eager, prompts, "scored", prompt_logprobs=True))
