"""Overlapped scheduling (step n+1 queued before step n's tokens are read) changes no output.

On CPU nothing runs concurrently, but the bookkeeping is the same as on CUDA: tokens pending on
the "device", inputs filled from the previous step's samples, a wasted row after an end token,
sequences stopped or aborted while a step is in flight. Each test runs the same requests with
overlap on and off and compares everything a client sees, and checks that overlap really ran.
"""

from __future__ import annotations

import pytest

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from support.random_llama import make_random_llama, random_prompts
from support.random_load import submit_and_abort_at_random, wait_idle

VOCAB = 320


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("overlap"), vocab_size=VOCAB)


def _run(folder, requests, late_requests=(), **options):
    """Submits `requests`, then `late_requests` once the first tokens are out; returns what
    each stream delivered, the stats, and whether every block came back."""
    executor = Executor.from_folder(folder, ExecutorOptions(block_size=4, **options)).start()
    try:
        streams = {r.request_id: executor.submit(r) for r in requests}
        if late_requests:
            first = next(iter(streams.values()))
            outputs = {first_id: [next(iter(first))] for first_id in [requests[0].request_id]}
            streams.update({r.request_id: executor.submit(r) for r in late_requests})
        else:
            outputs = {}
        for request_id, stream in streams.items():
            outputs.setdefault(request_id, []).extend(stream)
        stats = wait_idle(executor)
    finally:
        executor.shutdown()
    seen = {}
    for request_id, outs in outputs.items():
        seen[request_id] = (
            [t for out in outs for t in out.new_token_ids],
            [round(lp, 4) for out in outs for lp in out.new_logprobs],
            [tuple((t, round(lp, 4)) for t, lp in top) for out in outs
             for top in out.new_top_logprobs],
            outs[-1].finish_reason,
            [out.offset for out in outs],
        )
    return seen, stats


def _assert_same_outputs(folder, requests, late_requests=(), **options):
    sequential, _ = _run(folder, requests, late_requests, overlap_scheduling=False, **options)
    overlapped, stats = _run(folder, requests, late_requests, overlap_scheduling=True, **options)
    assert overlapped == sequential
    assert stats.num_free_blocks == stats.num_total_blocks
    return stats


def _greedy_run(folder, prompt, max_new_tokens):
    seen, _ = _run(folder, [Request("probe", prompt, SamplingParams(max_new_tokens=max_new_tokens))],
                   overlap_scheduling=False)
    return seen["probe"][0]


def test_overlapped_steps_match_sequential_steps_for_every_way_to_stop(folder):
    prompts = random_prompts([5, 17, 3, 40, 9, 26, 12, 7], VOCAB, seed=11)
    free_run = _greedy_run(folder, prompts[0], 12)
    end_id = free_run[5]                         # an end token met mid-stream
    stop_words = tuple(free_run[7:9])            # and a stop sequence
    requests = [
        Request("end", prompts[0], SamplingParams(max_new_tokens=12, end_id=end_id)),
        Request("stop", prompts[0], SamplingParams(max_new_tokens=12,
                                                   stop_token_ids=(stop_words,))),
        Request("len1", prompts[1], SamplingParams(max_new_tokens=1)),
        Request("long", prompts[2], SamplingParams(max_new_tokens=30, logprobs=True,
                                                   top_logprobs=3)),
        Request("sampled", prompts[3], SamplingParams(max_new_tokens=20, temperature=0.9,
                                                      top_k=40, top_p=0.9, seed=5,
                                                      logprobs=True)),
        Request("min", prompts[4], SamplingParams(max_new_tokens=10, min_new_tokens=6,
                                                  end_id=end_id, temperature=1.0, seed=9)),
    ]
    late = [Request("late-a", prompts[5], SamplingParams(max_new_tokens=9)),
            Request("late-b", prompts[6], SamplingParams(max_new_tokens=14, temperature=0.7,
                                                         seed=3))]
    stats = _assert_same_outputs(folder, requests, late, max_num_tokens=16)
    assert stats.num_overlapped_steps > 10


def test_overlap_survives_preemption_and_recompute(folder):
    prompts = random_prompts([30, 28, 25, 33, 21, 27], VOCAB, seed=4)
    requests = [Request(f"r{i}", p, SamplingParams(max_new_tokens=24, temperature=0.8 * (i % 2),
                                                    seed=i))
                for i, p in enumerate(prompts)]
    stats = _assert_same_outputs(folder, requests, kv_max_tokens=160,
                                 policy="MAX_UTILIZATION", max_num_tokens=32)
    assert stats.num_preemptions > 0, "the pool was meant to be too small for all at once"
    assert stats.num_overlapped_steps > 0


def test_prefix_reuse_under_overlap_hits_the_cache_and_changes_nothing(folder):
    shared = random_prompts([48], VOCAB, seed=8)[0]
    requests = [Request(f"r{i}", shared + [i + 1], SamplingParams(max_new_tokens=10))
                for i in range(4)]
    sequential, _ = _run(folder, requests[:1], overlap_scheduling=False,
                         enable_block_reuse=True)
    executor = Executor.from_folder(folder, ExecutorOptions(
        block_size=4, enable_block_reuse=True, overlap_scheduling=True)).start()
    try:
        first = list(executor.submit(requests[0]))
        later = [list(executor.submit(r)) for r in requests[1:]]
        stats = wait_idle(executor)
    finally:
        executor.shutdown()
    assert [t for out in first for t in out.new_token_ids] == sequential["r0"][0]
    assert all(outs[-1].num_cached_tokens >= 44 for outs in later)
    assert stats.num_overlapped_steps > 0
    assert stats.num_free_blocks == stats.num_total_blocks


def test_requests_that_read_their_history_run_steps_one_at_a_time(folder):
    prompts = random_prompts([6, 9, 11], VOCAB, seed=2)
    history = [Request("beams", prompts[0], SamplingParams(max_new_tokens=6, beam_width=2)),
               Request("penalty", prompts[1], SamplingParams(max_new_tokens=8,
                                                             repetition_penalty=1.3))]
    plain = [Request("plain", prompts[2], SamplingParams(max_new_tokens=8))]
    _assert_same_outputs(folder, history + plain)
    _, stats = _run(folder, history[1:], overlap_scheduling=True)
    assert stats.num_overlapped_steps == 0


def test_random_submits_and_aborts_under_overlap_leak_nothing(folder):
    """500 requests of random shapes and stops, a third aborted at random moments."""
    executor = Executor.from_folder(folder, ExecutorOptions(
        block_size=4, kv_max_tokens=256, policy="MAX_UTILIZATION", max_num_tokens=48,
        enable_block_reuse=True, overlap_scheduling=True)).start()
    try:
        submit_and_abort_at_random(executor, 500, VOCAB, seed=3, max_new_tokens=8,
                                   unread_streams=40, random_end_ids=True)
        stats = wait_idle(executor, timeout_s=60)
    finally:
        executor.shutdown()
    assert stats.num_overlapped_steps > 0
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_live_requests == 0
    assert executor.kv.num_live_sequences == 0


def test_runtime_flag_turns_overlap_off_and_the_default_leaves_it_to_the_device():
    import argparse

    from runtime_service.server.serve import add_serve_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    default = settings_from_args(parser.parse_args([])).executor
    off = settings_from_args(parser.parse_args(["--no-overlap-scheduling"])).executor
    assert default.overlap_scheduling is None and off.overlap_scheduling is False
