"""`serve --engine-core process`: the step loop in its own process, behind real gRPC on loopback.

Same tokens as the thread core and as transformers; a disconnect or Abort frees the request's
KV blocks in the core; a core that dies ends every stream with UNAVAILABLE and the pod exits 1;
no core process outlives its pod."""

from __future__ import annotations

import os
import signal
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.v1 import runtime_pb2
from support.kiln_servers import RuntimePod, runtime_stub, wait_all_blocks_free
from support.random_llama import hf_greedy, make_random_llama, random_prompts

VOCAB = 320
PROMPTS = random_prompts([3, 9, 17, 30], VOCAB, seed=7)
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("hf") / "llama", vocab_size=VOCAB,
                             max_position_embeddings=4096)


def start_pod(tmp_path, model, core: str) -> RuntimePod:
    pod = RuntimePod(tmp_path, str(model), "--engine-core", core)
    pod.wait_serving()
    return pod


@pytest.fixture(scope="module")
def process_pod(model, tmp_path_factory):
    pod = start_pod(tmp_path_factory.mktemp("process-pod"), model, "process")
    yield pod
    pod.stop()


@pytest.fixture
def stub(process_pod):
    with grpc.insecure_channel(process_pod.address) as channel:
        yield runtime_stub(channel)


def core_processes(pod: RuntimePod) -> list[psutil.Process]:
    return [p for p in psutil.Process(pod.process.pid).children(recursive=True)
            if "engine-core" in p.cmdline()]


def greedy_request(prompt, max_new_tokens=NEW_TOKENS, **fields):
    return runtime_pb2.GenerateRequest(
        token_ids=runtime_pb2.TokenIds(ids=prompt), streaming=True,
        sampling=runtime_pb2.SamplingConfig(max_new_tokens=max_new_tokens, ignore_eos=True),
        **fields)


def generate_all(address: str) -> list[list[int]]:
    """Every prompt at once (they share steps), each stream's tokens in offset order."""
    with grpc.insecure_channel(address) as channel:
        stub = runtime_stub(channel)
        calls = [stub.Generate(greedy_request(p), timeout=120) for p in PROMPTS]
        results = []
        for call in calls:
            tokens: list[int] = []
            for response in call:
                if response.HasField("chunk"):
                    chunk = response.chunk
                    tokens[chunk.offset:] = list(chunk.token_ids)
            results.append(tokens)
        return results


def long_stream(stub, request_id: str):
    return stub.Generate(greedy_request([3, 4, 5], max_new_tokens=2000, request_id=request_id),
                         timeout=120)


def ended_with(call) -> grpc.StatusCode:
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_the_process_core_runs_as_a_child_of_the_pod(process_pod):
    assert len(core_processes(process_pod)) == 1


def test_both_processes_set_their_start_up_heap_aside_once_serving(process_pod):
    """server/heap.py: the core once it has started, the pod a moment after SERVING."""
    wanted = ("engine core: ", "pod: ")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = [line for line in process_pod.log_path.read_text(errors="replace").splitlines()
                 if "start-up objects set aside from garbage collection" in line]
        if all(any(f"kiln.runtime {who}" in line for line in lines) for who in wanted):
            break
        time.sleep(0.2)
    for who in wanted:
        [line] = [line for line in lines if f"kiln.runtime {who}" in line]
        assert int(line.split(who)[1].split()[0]) > 1000        # objects frozen


def test_tokens_match_the_thread_core_and_transformers(model, process_pod, tmp_path):
    thread_pod = start_pod(tmp_path, model, "thread")
    try:
        from_thread = generate_all(thread_pod.address)
    finally:
        assert thread_pod.stop() == 0
    from_process = generate_all(process_pod.address)
    expected = [hf_greedy(model, prompt, NEW_TOKENS) for prompt in PROMPTS]
    assert from_process == expected
    assert from_thread == expected


def test_a_client_that_disconnects_mid_stream_frees_its_blocks_in_the_core(stub):
    aborted_before = stub.GetServerInfo(runtime_pb2.GetServerInfoRequest()).num_requests_aborted
    call = long_stream(stub, "disconnect-me")
    for _, _ in zip(range(3), call):
        pass                                # mid-stream: it holds blocks in the core now
    call.cancel()
    free, total, live = wait_all_blocks_free(stub, timeout_s=60)
    assert (free, live) == (total, 0)
    info = stub.GetServerInfo(runtime_pb2.GetServerInfoRequest())
    assert info.num_requests_aborted == aborted_before + 1     # the servicer sent the abort
    assert info.num_running == info.num_waiting == 0


def test_abort_frees_the_blocks_and_ends_the_stream_as_aborted(stub):
    call = long_stream(stub, "abort-me")
    first = next(call)
    assert first.request_id == "abort-me"
    assert stub.Abort(runtime_pb2.AbortRequest(request_id="abort-me")).aborted
    responses = list(call)
    completes = [r.complete for r in responses if r.HasField("complete")]
    assert completes and completes[-1].finish_reason == runtime_pb2.FINISH_REASON_ABORTED
    free, total, live = wait_all_blocks_free(stub, timeout_s=60)
    assert (free, live) == (total, 0)


def test_errors_from_the_core_keep_their_status(stub):
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(greedy_request([VOCAB + 5]), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_killed_core_ends_every_stream_with_unavailable_and_the_pod_exits(model, tmp_path):
    pod = start_pod(tmp_path, model, "process")
    try:
        [core] = core_processes(pod)
        with grpc.insecure_channel(pod.address) as channel:
            stub = runtime_stub(channel)
            calls = [long_stream(stub, f"doomed-{i}") for i in range(3)]
            for call in calls:
                next(call)                  # every stream is live in the core
            os.kill(core.pid, signal.SIGKILL)
            ends = [ended_with(call) for call in calls]
            assert ends == [grpc.StatusCode.UNAVAILABLE] * 3, pod.log()
        assert pod.process.wait(60) == 1, pod.log()
        assert "engine core process exited" in pod.log()
    finally:
        pod.stop()


def test_a_drained_pod_stops_its_core_and_a_killed_pod_leaves_no_core(model, tmp_path):
    drained = start_pod(tmp_path, model, "process")
    [core] = core_processes(drained)
    assert drained.stop() == 0, drained.log()
    assert psutil.wait_procs([core], timeout=30)[1] == []      # stopped before the pod exited
    assert "the pod closed the engine-core pipe" not in drained.log()   # SHUTDOWN, not EOF
    killed = start_pod(tmp_path, model, "process")
    try:
        [core] = core_processes(killed)
        killed.process.kill()
        # EOF on its pipe (or the parent watch) ends it
        assert psutil.wait_procs([core], timeout=30)[1] == []
    finally:
        killed.stop()


def test_a_start_that_fails_in_the_core_exits_2_with_the_typed_error(tmp_path):
    pod = RuntimePod(tmp_path, str(tmp_path / "no-such-engine"), "--engine-core", "process")
    assert pod.process.wait(180) == 2
    assert "kiln-runtime: error: NOT_FOUND" in pod.log()


def health(channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_health(channel, service: str, status: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while health(channel, service) != status:
        assert time.monotonic() < deadline, f"{service!r} did not turn {status}"
        time.sleep(0.05)


def test_a_stopped_core_turns_liveness_not_serving_until_it_steps_again(model, tmp_path):
    from runtime_service.server.servicer import LIVENESS_SERVICE_NAME
    pod = RuntimePod(tmp_path, str(model), "--engine-core", "process",
                     "--step-stall-timeout-s", "1")
    try:
        pod.wait_serving()
        [core] = core_processes(pod)
        with grpc.insecure_channel(pod.address) as channel:
            call = long_stream(runtime_stub(channel), "stalled")
            next(call)
            core.suspend()                  # a hung core: no steps, no messages
            wait_health(channel, LIVENESS_SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
            core.resume()
            wait_health(channel, LIVENESS_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            call.cancel()
        assert pod.stop() == 0, pod.log()
    finally:
        pod.stop()


def test_a_core_whose_steps_keep_failing_turns_the_pod_not_serving(model, tmp_path):
    from runtime_service.model.faults import ENV
    warm_up_steps = 2
    pod = RuntimePod(tmp_path, str(model), "--engine-core", "process",
                     env={ENV: f"0:{warm_up_steps + 3}+"})
    try:
        pod.wait_serving()
        with grpc.insecure_channel(pod.address) as channel:
            stub = runtime_stub(channel)
            for attempt in range(3):
                assert ended_with(long_stream(stub, f"fails-{attempt}")) == \
                    grpc.StatusCode.UNAVAILABLE
            wait_health(channel, "", health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(grpc.RpcError) as info:
                list(long_stream(stub, "refused"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "engine failed" in info.value.details()
        assert len(core_processes(pod)) == 1           # alive: the pod drains as in thread mode
        assert pod.stop() == 0, pod.log()
    finally:
        pod.stop()


def text_request(request_id: str) -> runtime_pb2.GenerateRequest:
    return runtime_pb2.GenerateRequest(
        request_id=request_id, text="The capital of France is", streaming=True,
        sampling=runtime_pb2.SamplingConfig(max_new_tokens=10, ignore_eos=True),
        output=runtime_pb2.OutputConfig(return_logprobs=True, top_logprobs=2,
                                        return_generation_logits=True))


def answers(stub, request_id: str):
    responses = list(stub.Generate(text_request(request_id), timeout=120))
    text = "".join(r.chunk.text for r in responses if r.HasField("chunk"))
    [complete] = [r.complete for r in responses if r.HasField("complete")]
    return text, complete


def test_load_engine_with_a_tokenizer_gives_what_the_thread_pod_gives(tiny_engine, pod, tmp_path):
    """LoadEngine on an empty process-core pod: ModelInfo, text in and out, logprobs and logits
    all equal a thread-core pod's on the same engine."""
    loaded = RuntimePod(tmp_path, "", "--engine-core", "process", "--allow-load-engine")
    try:
        loaded.wait_listening()
        with grpc.insecure_channel(loaded.address) as channel, \
                grpc.insecure_channel(pod.address) as thread_channel:
            stub, thread_stub = runtime_stub(channel), runtime_stub(thread_channel)
            info = stub.LoadEngine(runtime_pb2.LoadEngineRequest(engine_uri=tiny_engine["uri"]),
                                   timeout=180)
            thread_info = thread_stub.GetModelInfo(runtime_pb2.GetModelInfoRequest(), timeout=10)
            assert info == thread_info
            assert info.has_tokenizer and info.engine.engine_key == tiny_engine["engine_key"]
            text, complete = answers(stub, "text-process")
            thread_text, thread_complete = answers(thread_stub, "text-thread")
            assert text and text == thread_text
            assert list(complete.token_ids) == list(thread_complete.token_ids)
            assert complete.generation_logits == thread_complete.generation_logits
            assert list(complete.logprobs) == list(thread_complete.logprobs)
            assert list(complete.top_logprobs) == list(thread_complete.top_logprobs)
            assert len(complete.top_logprobs) == 10
            assert complete.generation_logits.rows == 10
            server = stub.GetServerInfo(runtime_pb2.GetServerInfoRequest(), timeout=10)
            assert server.kv_cache.block_size == 16 and server.num_live_requests == 0
        assert loaded.stop() == 0, loaded.log()
    finally:
        loaded.stop()


def test_a_split_engine_starts_its_ranks_from_the_core_and_they_end_with_it(model, tmp_path):
    from support.kiln_servers import build_engine
    uri = build_engine(model, tmp_path / "store", "--tp", "2", "--max-batch-size", "4",
                       "--max-seq-len", "2048", "--max-input-len", "64")["uri"]
    pod = RuntimePod(tmp_path, uri, "--engine-core", "process")
    try:
        pod.wait_serving()
        [core] = core_processes(pod)
        ranks = [p for p in core.children(recursive=True) if "worker" in p.cmdline()]
        assert len(ranks) == 1
        with grpc.insecure_channel(pod.address) as channel:
            stub = runtime_stub(channel)
            responses = list(stub.Generate(greedy_request(PROMPTS[1]), timeout=120))
            assert list(responses[-1].complete.token_ids) == hf_greedy(model, PROMPTS[1],
                                                                       NEW_TOKENS)
            call = long_stream(stub, "split")
            next(call)
            os.kill(core.pid, signal.SIGKILL)
            assert ended_with(call) == grpc.StatusCode.UNAVAILABLE
        assert pod.process.wait(60) == 1, pod.log()
        assert psutil.wait_procs(ranks, timeout=30)[1] == []     # the ranks saw their parent go
    finally:
        pod.stop()
