"""The two capacity policies, observed through the engine: same outputs, different concurrency."""

from __future__ import annotations

import pytest

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from support.random_llama import make_random_llama, random_prompts

VOCAB = 320


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("policies"), vocab_size=VOCAB)


def _run(folder, policy, prompts, params):
    executor = Executor.from_folder(folder, ExecutorOptions(
        block_size=4, kv_max_tokens=64, policy=policy)).start()
    try:
        outputs = executor.generate([Request(f"r{i}", p, params) for i, p in enumerate(prompts)])
        stats = executor.stats()
    finally:
        executor.shutdown()
    return [outputs[f"r{i}"] for i in range(len(prompts))], stats


def test_max_utilization_runs_more_at_once_and_every_output_equals_its_solo_run(folder):
    """Each request may grow to 32 tokens (8 blocks) in a 16-block pool: GUARANTEED_NO_EVICT
    can hold two at a time; MAX_UTILIZATION starts more and preempts when blocks run out."""
    prompts = random_prompts([8, 6, 7, 8, 5, 8], VOCAB, seed=9)
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    solo = [_run(folder, "GUARANTEED_NO_EVICT", [p], params)[0][0] for p in prompts]
    guaranteed, g_stats = _run(folder, "GUARANTEED_NO_EVICT", prompts, params)
    greedy, m_stats = _run(folder, "MAX_UTILIZATION", prompts, params)
    assert guaranteed == solo and greedy == solo
    assert g_stats.peak_running == 2 and g_stats.num_preemptions == 0
    assert m_stats.peak_running > g_stats.peak_running
    assert m_stats.num_preemptions > 0
    for stats in (g_stats, m_stats):
        assert stats.num_free_blocks == stats.num_total_blocks
