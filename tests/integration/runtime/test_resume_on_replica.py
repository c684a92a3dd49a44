"""A stream whose pod is SIGKILLed or SIGTERMed mid-stream resumes on another replica: the
caller sees every token once, in order, and greedy and seeded requests give exactly the tokens
of an uninterrupted run (issue 15: streams that survive a lost pod)."""

from __future__ import annotations

import signal

import pytest

from kiln.client import Endpoint, LoopThread, RuntimeClient
from kiln.v1 import runtime_pb2
from support.kiln_servers import RuntimePod
from support.random_llama import make_random_llama

MAX_NEW_TOKENS = 400
KILL_AFTER_TOKENS = 20


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("hf") / "llama", num_hidden_layers=2)


@pytest.fixture(scope="module")
def survivor(model, tmp_path_factory):
    pod = RuntimePod(tmp_path_factory.mktemp("survivor"), str(model))
    pod.wait_serving()
    yield pod
    pod.stop()


@pytest.fixture
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


def request(seeded: bool, request_id: str) -> runtime_pb2.GenerateRequest:
    sampling = runtime_pb2.SamplingConfig(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True)
    if seeded:
        sampling.temperature = 1.0
        sampling.top_k = 50
        sampling.seed = 1234
    return runtime_pb2.GenerateRequest(request_id=request_id, streaming=True, sampling=sampling,
                                       token_ids=runtime_pb2.TokenIds(ids=[11, 12, 13, 14]))


@pytest.mark.parametrize("seeded, sig", [(False, signal.SIGKILL), (True, signal.SIGTERM)])
def test_a_stream_resumes_on_another_replica_with_the_same_tokens(
        seeded, sig, model, survivor, loop, tmp_path):
    reference = RuntimeClient(Endpoint(survivor.address), loop)
    expected = reference.generate(request(seeded, "reference"), None, [11, 12, 13, 14]) \
        .result(timeout=120).outputs[0].token_ids
    reference.close()
    assert len(expected) == MAX_NEW_TOKENS

    victim = RuntimePod(tmp_path, str(model), "--grace-s", "0")
    try:
        victim.wait_serving()
        client = RuntimeClient(Endpoint(victim.address), loop, (Endpoint(survivor.address),))
        request_id = f"resumed-{sig.name}"
        result = client.generate(request(seeded, request_id), None, [11, 12, 13, 14])
        snapshots, killed = [], False
        for output in result:
            snapshots.append(list(output.outputs[0].token_ids))
            if not killed and len(snapshots[-1]) >= KILL_AFTER_TOKENS:
                victim.process.send_signal(sig)
                killed = True
        client.close()
        assert victim.process.wait(30) is not None
        assert len(snapshots[-1]) == MAX_NEW_TOKENS, "the stream ended before the replica died"
    finally:
        victim.stop()
    # Every snapshot extends the one before (no token rewritten, repeated or dropped) ...
    for before, after in zip(snapshots, snapshots[1:]):
        assert after[:len(before)] == before and len(after) > len(before)
    # ... and the whole output is the uninterrupted run's.
    assert snapshots[-1] == expected
    assert result.outputs[0].finish_reason == "length"
    assert f"id={request_id}.r1 " in survivor.log()          # it did move to the survivor
