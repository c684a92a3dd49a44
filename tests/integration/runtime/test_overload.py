"""Ten times the queue limit at once: the excess is refused RESOURCE_EXHAUSTED, every admitted
request completes, and health keeps answering SERVING throughout (the latencies are measured
by bench/bench_reliability.py; this checks the behaviour, not the speed)."""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.v1 import runtime_pb2
from support.kiln_servers import RuntimePod, runtime_stub
from support.random_llama import make_random_llama

QUEUE = 4
NEW_TOKENS = 32


def test_ten_times_the_queue_limit(tmp_path):
    model = make_random_llama(tmp_path / "llama", num_hidden_layers=2)
    pod = RuntimePod(tmp_path, str(model), "--max-queue-size", str(QUEUE))
    try:
        pod.wait_serving()
        outcomes, health_statuses = [], []
        done = threading.Event()

        def generate(index):
            with grpc.insecure_channel(pod.address) as channel:
                request = runtime_pb2.GenerateRequest(
                    token_ids=runtime_pb2.TokenIds(ids=[3, 4, index + 1]),
                    sampling=runtime_pb2.SamplingConfig(max_new_tokens=NEW_TOKENS,
                                                        ignore_eos=True))
                try:
                    responses = list(runtime_stub(channel).Generate(request, timeout=120))
                    outcomes.append(len(responses[-1].complete.token_ids))
                except grpc.RpcError as exc:
                    outcomes.append(exc.code())

        def probe_health():
            with grpc.insecure_channel(pod.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while not done.is_set():
                    health_statuses.append(
                        stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
                    done.wait(0.02)

        prober = threading.Thread(target=probe_health)
        prober.start()
        callers = [threading.Thread(target=generate, args=(i,)) for i in range(10 * QUEUE)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        done.set()
        prober.join()
        refused = [o for o in outcomes if o == grpc.StatusCode.RESOURCE_EXHAUSTED]
        completed = [o for o in outcomes if o == NEW_TOKENS]
        assert len(refused) + len(completed) == 10 * QUEUE, outcomes
        assert refused and len(completed) >= QUEUE
        assert set(health_statuses) == {health_pb2.HealthCheckResponse.SERVING}
    finally:
        pod.stop()
