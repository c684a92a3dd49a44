"""Generate over real gRPC: output equals transformers' greedy tokens, chunks arrive in order with
contiguous offsets, and every way a call can end early gives its KV blocks back."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from kiln.v1 import runtime_pb2
from support.kiln_servers import kv_counters, wait_all_blocks_free
from support.random_llama import hf_greedy

PROMPT = [32, 12, 901, 4000, 77]


def request(ids=PROMPT, max_new_tokens=8, streaming=True, **kwargs) -> runtime_pb2.GenerateRequest:
    return runtime_pb2.GenerateRequest(
        token_ids=runtime_pb2.TokenIds(ids=ids), streaming=streaming,
        sampling=runtime_pb2.SamplingConfig(max_new_tokens=max_new_tokens, ignore_eos=True),
        **kwargs)


def test_streamed_tokens_equal_transformers_greedy_with_contiguous_offsets(stub, tiny_model):
    responses = list(stub.Generate(request(max_new_tokens=10), timeout=60))
    chunks = [r.chunk for r in responses if r.HasField("chunk")]
    completes = [r.complete for r in responses if r.HasField("complete")]
    assert len(completes) == 1 and responses[-1].HasField("complete")
    offsets = [c.offset for c in chunks]
    assert offsets == sorted(offsets) and offsets[0] == 0
    streamed = []
    for chunk in chunks:
        assert chunk.offset == len(streamed)
        streamed.extend(chunk.token_ids)
    assert streamed == list(completes[0].token_ids)
    assert streamed == hf_greedy(tiny_model, PROMPT, 10)
    assert completes[0].finish_reason == runtime_pb2.FINISH_REASON_LENGTH
    assert completes[0].usage.prompt_tokens == len(PROMPT)
    assert completes[0].usage.completion_tokens == 10
    assert completes[0].text == ""          # token ids in: ids out, no text


def test_non_streaming_sends_one_complete_only(stub):
    responses = list(stub.Generate(request(streaming=False, max_new_tokens=4), timeout=60))
    assert [r.WhichOneof("kind") for r in responses] == ["complete"]
    assert len(responses[0].complete.token_ids) == 4


def test_text_prompt_is_tokenized_on_the_server_and_text_streams_back(stub, tiny_model):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    text = "The capital of France is"
    ids = list(stub.Tokenize(runtime_pb2.TokenizeRequest(text=text), timeout=10).token_ids)
    assert ids == tokenizer(text)["input_ids"]
    msg = runtime_pb2.GenerateRequest(text=text, streaming=True, sampling=runtime_pb2.SamplingConfig(
        max_new_tokens=6, ignore_eos=True))
    responses = list(stub.Generate(msg, timeout=60))
    complete = responses[-1].complete
    assert list(complete.token_ids) == hf_greedy(tiny_model, ids, 6)
    assert "".join(r.chunk.text for r in responses if r.HasField("chunk")) == complete.text
    assert complete.text == tokenizer.decode(list(complete.token_ids), skip_special_tokens=True)


def test_model_info_describes_the_engine(stub, tiny_engine):
    info = stub.GetModelInfo(runtime_pb2.GetModelInfoRequest(), timeout=10)
    assert info.engine.engine_key == tiny_engine["engine_key"]
    assert info.kind == "engine" and info.has_tokenizer
    assert (info.vocab_size, info.num_layers, info.settings.max_seq_len) == (49152, 2, 2048)
    assert list(info.eos_token_ids) == [2]


def _first_chunk_then(stub, end_call, request_id: str):
    call = stub.Generate(request(max_new_tokens=1900, request_id=request_id), timeout=120)
    first = next(call)
    assert first.HasField("chunk")
    free, total, live = kv_counters(stub)
    assert free < total and live == 1
    return call, end_call(call)


def test_cancelling_the_call_frees_its_kv_blocks(stub):
    call, _ = _first_chunk_then(stub, lambda call: call.cancel(), "cancel-me")
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    free, total, live = wait_all_blocks_free(stub)
    assert (free, live) == (total, 0)


def test_deadline_ends_the_stream_and_frees_its_kv_blocks(stub):
    call = stub.Generate(request(max_new_tokens=1900), timeout=0.5)
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    free, total, live = wait_all_blocks_free(stub)
    assert (free, live) == (total, 0)


def test_abort_rpc_finishes_the_stream_as_aborted(stub):
    call, reply = _first_chunk_then(
        stub, lambda call: stub.Abort(runtime_pb2.AbortRequest(request_id="abort-me"), timeout=10),
        "abort-me")
    assert reply.aborted
    last = list(call)[-1]
    assert last.complete.finish_reason == runtime_pb2.FINISH_REASON_ABORTED
    assert len(last.complete.token_ids) < 1900
    assert wait_all_blocks_free(stub)[0] == kv_counters(stub)[1]
    assert not stub.Abort(runtime_pb2.AbortRequest(request_id="abort-me"), timeout=10).aborted


def test_concurrent_streams_each_match_their_own_greedy_output(stub, tiny_model):
    prompts = [[5 + i, 300 + i, 9000 + i] for i in range(6)]
    results = {}

    def run(i):
        responses = list(stub.Generate(request(prompts[i], max_new_tokens=6), timeout=60))
        results[i] = list(responses[-1].complete.token_ids)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for i, prompt in enumerate(prompts):
        assert results[i] == hf_greedy(tiny_model, prompt, 6)


def test_server_counters_move(stub):
    before = stub.GetServerInfo(runtime_pb2.GetServerInfoRequest(), timeout=10)
    list(stub.Generate(request(max_new_tokens=3), timeout=60))
    time.sleep(0.05)
    after = stub.GetServerInfo(runtime_pb2.GetServerInfoRequest(), timeout=10)
    assert after.num_requests_total == before.num_requests_total + 1
    assert after.num_tokens_generated >= before.num_tokens_generated + 3
    assert after.state == runtime_pb2.SERVER_STATE_SERVING
