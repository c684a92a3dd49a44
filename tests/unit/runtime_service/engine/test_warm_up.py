"""The start-up step of max_num_tokens prompt tokens (so that serving never grows the allocator):
it really is one full step, it leaves no request or KV block behind, it stays off on the CPU
unless asked for, and it caches nothing that a later prompt could hit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from support.random_llama import make_random_llama, random_prompts

VOCAB = 320


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("warm-up"), vocab_size=VOCAB)


def _executor(folder, **options) -> Executor:
    return Executor.from_folder(folder, ExecutorOptions(block_size=4, **options))


def test_the_warm_up_is_one_step_of_max_num_tokens_and_leaves_nothing_behind(folder):
    executor = _executor(folder, max_num_tokens=96, enable_block_reuse=True,
                         warm_up_largest_step=True)
    executor.limits = replace(executor.limits, max_input_len=40)     # three prompts: 40, 40, 16
    steps = []
    launch = executor.runner.launch
    executor.runner.launch = lambda batch: steps.append(
        sum(s.num_new_tokens for s in batch.scheduled)) or launch(batch)
    executor.start()
    try:
        stats = executor.stats()
        assert steps[0] == 96                          # the whole budget in the first step
        assert stats.num_live_requests == 0 and stats.num_running == 0
        assert stats.num_free_blocks == stats.num_total_blocks
        prompt = random_prompts([40], VOCAB, seed=5)[0]
        out = executor.generate([Request("after", prompt, SamplingParams(max_new_tokens=4))])
        assert len(out["after"]) == 4
    finally:
        executor.shutdown()


def test_warm_up_requests_fit_the_engine_limits_and_share_no_prefix(folder):
    executor = _executor(folder, max_num_tokens=200)
    executor.limits = limits = replace(executor.limits, max_input_len=64)
    requests = executor.largest_step_requests()
    assert [len(r.prompt_token_ids) for r in requests] == [64, 64, 64, 8]
    assert all(0 < t < limits.vocab_size for r in requests for t in r.prompt_token_ids)
    firsts = [tuple(r.prompt_token_ids[:4]) for r in requests]
    assert len(set(firsts)) == len(firsts)             # no two share a first block
    assert len({r.request_id for r in requests}) == len(requests)


def test_a_small_kv_cache_gets_a_warm_up_it_can_hold(folder):
    executor = _executor(folder, max_num_tokens=96, kv_max_tokens=64, warm_up_largest_step=True)
    total = sum(len(r.prompt_token_ids) for r in executor.largest_step_requests())
    assert total <= 64
    executor.start()
    try:
        stats = executor.stats()
        assert stats.num_free_blocks == stats.num_total_blocks and stats.num_live_requests == 0
    finally:
        executor.shutdown()


def test_cpu_executors_skip_the_warm_up_unless_asked(folder):
    executor = _executor(folder).start()
    try:
        assert not executor.warms_up and executor.stats().num_steps == 0
    finally:
        executor.shutdown()


def test_the_serve_flag_turns_the_warm_up_off():
    import argparse

    from runtime_service.server.serve import add_serve_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert settings_from_args(parser.parse_args([])).executor.warm_up_largest_step is None
    off = settings_from_args(parser.parse_args(["--no-warm-up"])).executor
    assert off.warm_up_largest_step is False
