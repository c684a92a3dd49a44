"""Hashed prefix reuse: shared prompt prefixes are computed once and outputs do not change."""

from __future__ import annotations

import pytest

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from support.random_llama import make_random_llama, random_prompts

VOCAB = 320


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("reuse"), vocab_size=VOCAB)


def _run(executor, request):
    outputs = list(executor.submit(request))
    return [t for o in outputs for t in o.new_token_ids], outputs[-1]


def test_second_request_reuses_the_shared_prefix_and_output_is_unchanged(folder):
    prefix = random_prompts([40], VOCAB, seed=3)[0]
    tails = random_prompts([5, 7], VOCAB, seed=4)
    params = SamplingParams(max_new_tokens=8)
    plain = Executor.from_folder(folder, ExecutorOptions(block_size=8)).start()
    reuse = Executor.from_folder(folder, ExecutorOptions(block_size=8,
                                                         enable_block_reuse=True)).start()
    try:
        expected = [_run(plain, Request(f"p{i}", prefix + t, params))[0]
                    for i, t in enumerate(tails)]
        first, first_done = _run(reuse, Request("a", prefix + tails[0], params))
        second, second_done = _run(reuse, Request("b", prefix + tails[1], params))
        stats = reuse.stats()
    finally:
        plain.shutdown()
        reuse.shutdown()
    assert [first, second] == expected
    assert first_done.num_cached_tokens == 0
    assert second_done.num_cached_tokens == 40          # five full blocks of eight
    assert stats.num_free_blocks == stats.num_total_blocks


def test_identical_prompt_reuses_all_but_the_last_token(folder):
    prompt = random_prompts([33], VOCAB, seed=5)[0]
    executor = Executor.from_folder(folder, ExecutorOptions(block_size=8,
                                                            enable_block_reuse=True)).start()
    try:
        first, _ = _run(executor, Request("a", prompt, SamplingParams(max_new_tokens=6)))
        again, done = _run(executor, Request("b", prompt, SamplingParams(max_new_tokens=6)))
    finally:
        executor.shutdown()
    assert again == first
    assert done.num_cached_tokens == 32


def test_prefixes_are_not_shared_across_cache_salts(folder):
    prompt = random_prompts([24], VOCAB, seed=6)[0]
    executor = Executor.from_folder(folder, ExecutorOptions(block_size=8,
                                                            enable_block_reuse=True)).start()
    try:
        _run(executor, Request("a", prompt, SamplingParams(max_new_tokens=2), cache_salt="x"))
        _, other_salt = _run(executor, Request("b", prompt, SamplingParams(max_new_tokens=2),
                                               cache_salt="y"))
        _, same_salt = _run(executor, Request("c", prompt, SamplingParams(max_new_tokens=2),
                                              cache_salt="x"))
    finally:
        executor.shutdown()
    assert other_salt.num_cached_tokens == 0
    assert same_salt.num_cached_tokens == 16


def test_reuse_is_off_by_default(folder):
    prompt = random_prompts([24], VOCAB, seed=6)[0]
    executor = Executor.from_folder(folder, ExecutorOptions(block_size=8)).start()
    try:
        _run(executor, Request("a", prompt, SamplingParams(max_new_tokens=2)))
        _, second = _run(executor, Request("b", prompt, SamplingParams(max_new_tokens=2)))
    finally:
        executor.shutdown()
    assert second.num_cached_tokens == 0
