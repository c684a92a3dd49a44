"""The executor's contract: streaming order, finish reasons, aborts, seeds, limits, no leaks."""

from __future__ import annotations

import asyncio

import pytest
import torch

from runtime_service.errors import CapacityExceeded, FailedPrecondition, InvalidRequest
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import FinishReason, Request, SamplingParams
from support.random_llama import make_random_llama, random_prompts
from support.random_load import submit_and_abort_at_random, wait_idle

VOCAB = 320


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("tiny"), vocab_size=VOCAB)


@pytest.fixture
def executor(folder):
    executor = Executor.from_folder(folder, ExecutorOptions(block_size=4)).start()
    yield executor
    executor.shutdown()


def _collect(stream):
    return list(stream)


def _tokens(outputs):
    return [t for out in outputs for t in out.new_token_ids]


def test_stream_offsets_are_contiguous_and_last_output_finishes(executor):
    prompt = random_prompts([6], VOCAB)[0]
    request = Request("a", prompt, SamplingParams(max_new_tokens=7))
    outputs = _collect(executor.submit(request))
    # stamped once, in order: arrival <= first step <= first token (the pod's TTFT split)
    assert request.arrival_time <= request.first_scheduled_time <= request.first_output_time
    offsets = [out.offset for out in outputs]
    assert offsets == list(range(7))
    assert [out.finished for out in outputs] == [False] * 6 + [True]
    last = outputs[-1]
    assert last.finish_reason is FinishReason.LENGTH
    assert last.num_prompt_tokens == 6 and last.num_output_tokens == 7


def test_end_id_stops_and_is_included(executor):
    prompt = random_prompts([5], VOCAB)[0]
    free_run = _tokens(executor.submit(Request("a", prompt, SamplingParams(max_new_tokens=8))))
    end_id = free_run[3]
    first_hit = free_run.index(end_id)
    outputs = _collect(executor.submit(
        Request("b", prompt, SamplingParams(max_new_tokens=8, end_id=end_id))))
    assert _tokens(outputs) == free_run[:first_hit + 1]
    assert outputs[-1].finish_reason is FinishReason.END_ID


def test_min_new_tokens_suppresses_end_id(executor):
    prompt = random_prompts([5], VOCAB)[0]
    free_run = _tokens(executor.submit(Request("a", prompt, SamplingParams(max_new_tokens=6))))
    end_id = free_run[0]
    outputs = _collect(executor.submit(Request(
        "b", prompt, SamplingParams(max_new_tokens=6, min_new_tokens=4, end_id=end_id))))
    tokens = _tokens(outputs)
    assert len(tokens) >= 4 and end_id not in tokens[:4]


def test_stop_token_sequence_ends_generation(executor):
    prompt = random_prompts([5], VOCAB)[0]
    free_run = _tokens(executor.submit(Request("a", prompt, SamplingParams(max_new_tokens=10))))
    stop = tuple(free_run[4:6])
    outputs = _collect(executor.submit(Request(
        "b", prompt, SamplingParams(max_new_tokens=10, stop_token_ids=(stop,)))))
    assert _tokens(outputs) == free_run[:6]
    assert outputs[-1].finish_reason is FinishReason.STOP


def test_bad_words_are_never_generated(executor):
    prompt = random_prompts([5], VOCAB)[0]
    free_run = _tokens(executor.submit(Request("a", prompt, SamplingParams(max_new_tokens=10))))
    banned = free_run[2]
    tokens = _tokens(executor.submit(Request(
        "b", prompt, SamplingParams(max_new_tokens=10, bad_token_ids=((banned,),)))))
    assert banned not in tokens
    assert tokens[:2] == free_run[:2]


def test_logprobs_match_log_softmax_of_transformers_logits(folder, executor):
    from transformers import LlamaForCausalLM

    prompt = random_prompts([9], VOCAB)[0]
    outputs = _collect(executor.submit(
        Request("a", prompt, SamplingParams(max_new_tokens=3, logprobs=True))))
    tokens, logprobs = _tokens(outputs), [lp for o in outputs for lp in o.new_logprobs]
    hf = LlamaForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + tokens[:-1]])).logits[0, len(prompt) - 1:]
    expected = logits.log_softmax(-1)[torch.arange(3), torch.tensor(tokens)]
    assert torch.allclose(torch.tensor(logprobs), expected, atol=1e-4)


def test_seeded_sampling_is_identical_alone_and_in_a_batch(executor):
    prompts = random_prompts([4, 9, 13], VOCAB, seed=5)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=1234)
    alone = _tokens(executor.submit(Request("alone", prompts[0], params)))
    noise = [executor.submit(Request(f"n{i}", p, SamplingParams(
        max_new_tokens=12, temperature=0.7, seed=i))) for i, p in enumerate(prompts[1:])]
    batched = _tokens(executor.submit(Request("batched", prompts[0], params)))
    for stream in noise:
        _collect(stream)
    other_seed = _tokens(executor.submit(Request(
        "other", prompts[0], SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9,
                                             seed=99))))
    assert alone == batched
    assert alone != other_seed


def test_abort_frees_blocks_and_ends_stream(executor):
    prompt = random_prompts([20], VOCAB)[0]
    stream = executor.submit(Request("long", prompt, SamplingParams(max_new_tokens=400)))
    first = next(stream)
    assert executor.stats().num_free_blocks < executor.stats().num_total_blocks
    assert executor.abort("long")
    rest = list(stream)
    assert (rest[-1] if rest else first).finish_reason is FinishReason.ABORTED
    stats = wait_idle(executor)
    assert stats.num_free_blocks == stats.num_total_blocks
    assert not executor.abort("long")


def test_bad_requests_fail_before_scheduling_and_others_continue(executor):
    good = executor.submit(Request("good", random_prompts([5], VOCAB)[0],
                                   SamplingParams(max_new_tokens=20)))
    with pytest.raises(InvalidRequest, match="empty"):
        executor.submit(Request("empty", []))
    with pytest.raises(InvalidRequest, match="out of range"):
        executor.submit(Request("oob", [1, VOCAB]))
    with pytest.raises(InvalidRequest, match="temperature"):
        executor.submit(Request("temp", [1], SamplingParams(temperature=-1.0)))
    with pytest.raises(InvalidRequest, match="max_input_len"):
        executor.submit(Request("long", [1] * (executor.limits.max_input_len + 1)))
    with pytest.raises(FailedPrecondition, match="max_beam_width"):
        executor.submit(Request("beam", [1], SamplingParams(beam_width=8)))
    with pytest.raises(InvalidRequest, match="already running"):
        executor.submit(Request("good", [1]))
    assert len(_tokens(good)) == 20
    assert wait_idle(executor).num_live_requests == 0


def test_queue_bound_answers_capacity_exceeded(folder):
    executor = Executor.from_folder(folder, ExecutorOptions(max_queue_size=2))
    try:
        executor.submit(Request("a", [1, 2], SamplingParams(max_new_tokens=2)))
        executor.submit(Request("b", [1, 2], SamplingParams(max_new_tokens=2)))
        with pytest.raises(CapacityExceeded, match="queue is full"):
            executor.submit(Request("c", [1, 2]))
    finally:
        executor.start()
        executor.shutdown()


def test_async_iteration_streams_tokens(executor):
    async def run():
        stream = executor.submit(Request("async", [3, 4, 5], SamplingParams(max_new_tokens=5)))
        return [out async for out in stream]

    outputs = asyncio.run(run())
    assert [o.offset for o in outputs] == list(range(5))
    assert outputs[-1].finished


def test_thousands_of_random_submits_and_aborts_leak_nothing(folder):
    """2,000 requests of random shapes, a third aborted at random moments."""
    executor = Executor.from_folder(folder, ExecutorOptions(
        block_size=4, kv_max_tokens=512, policy="MAX_UTILIZATION", max_num_tokens=64)).start()
    try:
        submit_and_abort_at_random(executor, 2000, VOCAB, seed=7)
        stats = wait_idle(executor, timeout_s=60)
    finally:
        executor.shutdown()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_live_requests == 0
    assert executor.kv.num_live_sequences == 0


def test_top_and_prompt_logprobs_match_transformers(folder):
    from transformers import LlamaForCausalLM

    executor = Executor.from_folder(folder, ExecutorOptions(block_size=4, max_num_tokens=5)).start()
    prompt = random_prompts([11], VOCAB, seed=12)[0]
    try:
        outputs = list(executor.submit(Request("a", prompt, SamplingParams(
            max_new_tokens=3, logprobs=True, top_logprobs=4, prompt_logprobs=True))))
    finally:
        executor.shutdown()
    tokens = _tokens(outputs)
    hf = LlamaForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        log_probs = hf(torch.tensor([prompt + tokens])).logits[0].log_softmax(-1)
    expected_prompt = log_probs[torch.arange(10), torch.tensor(prompt[1:])]
    assert torch.allclose(torch.tensor(outputs[0].prompt_logprobs), expected_prompt, atol=1e-4)
    assert all(not o.prompt_logprobs for o in outputs[1:])
    tops = [top for o in outputs for top in o.new_top_logprobs]
    assert len(tops) == 3
    for position, top in enumerate(tops):
        values, ids = log_probs[len(prompt) - 1 + position].topk(4)
        assert [t for t, _ in top] == ids.tolist()
        assert torch.allclose(torch.tensor([v for _, v in top]), values, atol=1e-4)
        assert top[0][0] == tokens[position]          # greedy picks the most likely


def test_an_input_source_feeds_the_loop_from_its_own_thread_and_can_stop_it(folder):
    """What the engine-core process does: the step-loop thread takes submits (and a stop) from
    `poll` at the top of each pass and waits in `wait` while idle; a request read there runs
    like any other, and a stop asked from the loop's own thread ends it with nothing leaked."""
    import queue
    import threading

    executor = Executor.from_folder(folder, ExecutorOptions(block_size=4)).start()
    inputs: queue.SimpleQueue = queue.SimpleQueue()
    streams, threads = [], set()

    def poll():
        threads.add(threading.current_thread().name)
        while True:
            try:
                item = inputs.get_nowait()
            except queue.Empty:
                return
            if item == "stop":
                executor.request_stop()
            else:
                streams.append(executor.submit(item))

    waits = []
    executor.use_input_source(poll, lambda timeout_s: waits.append(timeout_s) or
                              threading.Event().wait(0.01))
    for _ in range(1000):                                # idle: it waits in the source's wait
        if waits:
            break
        threading.Event().wait(0.01)
    assert waits and set(waits) == {0.5}
    prompt = random_prompts([6], VOCAB)[0]
    reference = executor.generate([Request("ref", prompt, SamplingParams(max_new_tokens=5))])
    inputs.put(Request("a", prompt, SamplingParams(max_new_tokens=5)))
    for _ in range(1000):                                # at most 10 s
        if streams:
            break
        threading.Event().wait(0.01)
    assert streams, "the loop never polled its input source"
    outputs = _collect(streams[0])
    assert _tokens(outputs) == reference["ref"]          # greedy: the same tokens either way
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    assert threads == {"kiln-step-loop"}
    inputs.put(Request("b", prompt, SamplingParams(max_new_tokens=50)))
    inputs.put("stop")
    executor.wait_stopped(10)
    assert _collect(streams[1])[-1].finish_reason is FinishReason.ABORTED
    assert executor.stats().num_live_requests == 0
    assert executor.kv.num_free_blocks == executor.kv.num_total_blocks
    executor.shutdown()
