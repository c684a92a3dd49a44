"""Reliability of a Kiln runtime under faults, on the CPU with a small random model: one table.

Five measurements, each on real `serve` processes on loopback:
- resume: streams on pod A with pod B as replica; A is SIGKILLed mid-stream; every stream must
  end with the tokens of an uninterrupted run on B, none duplicated or missing;
- churn: random cancels, short deadlines and SIGKILLed client processes; afterwards the pod
  must hold no KV block and no request;
- overload: 10x --max-queue-size requests at once: the excess is refused RESOURCE_EXHAUSTED
  (latency p99), admitted requests complete, health is polled throughout (p99);
- large prompts: 24 prompts of 1 MiB characters while health is polled (p99);
- step faults: live streams when an injected fault fails a step; the time until all ended.

    python bench/bench_reliability.py --json bench/results/reliability.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench_common  # noqa: F401 - puts the repository and tests/ on sys.path
import grpc

from kiln.client import Endpoint, LoopThread, RuntimeClient
from kiln.errors import Cancelled, DeadlineExceeded
from kiln.v1 import runtime_pb2
from runtime_service.model.faults import ENV as FAULT_ENV
from support.kiln_servers import RuntimePod, kv_counters, make_tiny_chat_llama, runtime_stub
from support.random_llama import make_random_llama

WARM_UP_STEPS = 2


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


def token_request(ids, max_new_tokens: int, seed: int | None = None, request_id: str = ""):
    sampling = runtime_pb2.SamplingConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
    if seed is not None:
        sampling.temperature, sampling.top_k, sampling.seed = 1.0, 50, seed
    return runtime_pb2.GenerateRequest(request_id=request_id, streaming=True, sampling=sampling,
                                       token_ids=runtime_pb2.TokenIds(ids=ids))


PROBE = """
import json, sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))
stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
print("ready", flush=True)
latencies = []
import select
while not select.select([sys.stdin], [], [], float(sys.argv[2]))[0]:
    started = time.perf_counter()
    try:
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.RpcError:
        pass
    latencies.append(time.perf_counter() - started)
print(json.dumps(latencies), flush=True)
"""


class HealthProbe:
    """Polls grpc.health.v1 every `interval_s` from its own process (so the load this process
    generates cannot delay the probe) and keeps each latency."""

    def __init__(self, address: str, interval_s: float = 0.02):
        self.address = address
        self.interval_s = interval_s
        self.latencies_s: list[float] = []
        self._process = None

    def __enter__(self):
        self._process = subprocess.Popen(
            [sys.executable, "-c", PROBE, self.address, str(self.interval_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc):
        self._process.stdin.write("stop\n")
        self._process.stdin.flush()
        self.latencies_s = json.loads(self._process.stdout.readline())
        self._process.wait(30)


def pod_dir(work: Path, name: str) -> Path:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def bench_resume(model: Path, work: Path, num_streams: int, max_new_tokens: int) -> dict:
    survivor = RuntimePod(pod_dir(work, "b"), str(model))
    victim = RuntimePod(pod_dir(work, "a"), str(model))
    loop = LoopThread()
    try:
        survivor.wait_serving()
        victim.wait_serving()
        reference = RuntimeClient(Endpoint(survivor.address), loop)
        requests = [token_request([20 + i, 21, 22], max_new_tokens,
                                  seed=i if i % 2 else None, request_id=f"resume-{i}")
                    for i in range(num_streams)]
        expected = []
        for request in requests:
            copy = runtime_pb2.GenerateRequest()
            copy.CopyFrom(request)
            copy.request_id += "-ref"
            expected.append(reference.generate(copy, None, []).result(600).outputs[0].token_ids)
        reference.close()
        client = RuntimeClient(Endpoint(victim.address), loop, (Endpoint(survivor.address),))
        results = [client.generate(r, None, []) for r in requests]
        snapshots = [[] for _ in results]
        started = threading.Event()

        def follow(index):
            for output in results[index]:
                snapshots[index].append(list(output.outputs[0].token_ids))
                if len(snapshots[index][-1]) >= 10:
                    started.set()
        threads = [threading.Thread(target=follow, args=(i,)) for i in range(len(results))]
        for thread in threads:
            thread.start()
        started.wait(120)
        victim.process.send_signal(signal.SIGKILL)
        for thread in threads:
            thread.join(600)
        duplicated = missing = mismatched = 0
        for seen, want in zip(snapshots, expected):
            for before, after in zip(seen, seen[1:]):
                duplicated += max(0, len(before) - len(after)) + sum(
                    a != b for a, b in zip(before, after))
            final = seen[-1] if seen else []
            missing += max(0, len(want) - len(final))
            mismatched += sum(a != b for a, b in zip(final, want))
        survivor._log.flush()
        resumed = survivor.log_path.read_text(errors="replace").count(".r1 status=OK")
        client.close()
        return {"streams": num_streams, "killed_mid_stream": num_streams, "resumed": resumed,
                "duplicated_tokens": duplicated, "missing_tokens": missing,
                "tokens_differing_from_uninterrupted": mismatched}
    finally:
        loop.close()
        victim.stop()
        survivor.stop()


CLIENT_TO_KILL = """
import sys, time, grpc
sys.path.insert(0, {sdk!r})
from kiln.v1 import runtime_pb2, runtime_pb2_grpc
stub = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel({address!r}))
calls = [stub.Generate(runtime_pb2.GenerateRequest(streaming=True,
         token_ids=runtime_pb2.TokenIds(ids=[5, 6, i]),
         sampling=runtime_pb2.SamplingConfig(max_new_tokens=300, ignore_eos=True)))
         for i in range(4)]
for call in calls:
    next(call)
print("streaming", flush=True)
time.sleep(60)
"""


def bench_churn(model: Path, work: Path, num_requests: int, num_client_kills: int,
                seed: int) -> dict:
    pod = RuntimePod(pod_dir(work, "churn"), str(model))
    loop = LoopThread()
    rng = random.Random(seed)
    try:
        pod.wait_serving()
        client = RuntimeClient(Endpoint(pod.address), loop)
        cancels = deadlines = 0
        pending = []
        for index in range(num_requests):
            action = rng.choice(["cancel", "deadline", "finish"])
            request = token_request([rng.randrange(1, 300) for _ in range(rng.randint(1, 20))],
                                    rng.randint(1, 200), seed=index, request_id=f"churn-{index}")
            timeout = rng.uniform(0.01, 0.3) if action == "deadline" else None
            result = client.generate(request, None, [], timeout_s=timeout)
            if action == "cancel":
                time.sleep(rng.uniform(0, 0.05))
                result.cancel()
                cancels += 1
            deadlines += action == "deadline"
            pending.append(result)
        for result in pending:
            try:
                result.result(600)
            except (Cancelled, DeadlineExceeded):
                pass                    # what the test asked for
        sdk = str(Path(__file__).resolve().parents[1] / "sdk")
        for _ in range(num_client_kills):
            proc = subprocess.Popen([sys.executable, "-c", CLIENT_TO_KILL.format(
                sdk=sdk, address=pod.address)], stdout=subprocess.PIPE, text=True)
            proc.stdout.readline()
            proc.kill()
            proc.wait()
        with grpc.insecure_channel(pod.address) as channel:
            stub = runtime_stub(channel)
            deadline = time.monotonic() + 30
            while True:
                free, total, live = kv_counters(stub)
                if (free == total and live == 0) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        client.close()
        return {"requests": num_requests, "cancels": cancels, "deadlines": deadlines,
                "client_kills": num_client_kills, "leaked_blocks": total - free,
                "leaked_requests": live}
    finally:
        loop.close()
        pod.stop()


def bench_overload(model: Path, work: Path, queue_size: int) -> dict:
    pod = RuntimePod(pod_dir(work, "overload"), str(model), "--max-queue-size", str(queue_size))
    try:
        pod.wait_serving()
        outcomes = []
        channel = grpc.insecure_channel(pod.address)        # connected before the burst
        stub = runtime_stub(channel)
        stub.GetServerInfo(runtime_pb2.GetServerInfoRequest(), timeout=10)
        go = threading.Barrier(10 * queue_size)

        def one(index):
            go.wait()
            started = time.perf_counter()
            try:
                responses = list(stub.Generate(token_request([7, 8, index % 200 + 1], 64),
                                               timeout=300))
                outcomes.append(("ok", len(responses[-1].complete.token_ids),
                                 time.perf_counter() - started))
            except grpc.RpcError as exc:
                outcomes.append((exc.code().name, 0, time.perf_counter() - started))
        with HealthProbe(pod.address) as probe:
            threads = [threading.Thread(target=one, args=(i,)) for i in range(10 * queue_size)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        channel.close()
        refused = [o for o in outcomes if o[0] == "RESOURCE_EXHAUSTED"]
        admitted = [o for o in outcomes if o[0] == "ok"]
        return {"requests": len(outcomes), "queue_size": queue_size, "refused": len(refused),
                "refusal_p99_ms": 1000 * p99([o[2] for o in refused]),
                "admitted": len(admitted),
                "admitted_complete": sum(o[1] == 64 for o in admitted),
                "other_errors": len(outcomes) - len(refused) - len(admitted),
                "health_p99_ms": 1000 * p99(probe.latencies_s),
                "health_max_ms": 1000 * max(probe.latencies_s)}
    finally:
        pod.stop()


def bench_large_prompts(chat_model: Path, work: Path, num_prompts: int) -> dict:
    pod = RuntimePod(pod_dir(work, "large"), str(chat_model))
    try:
        pod.wait_serving()
        text = ("the quick brown fox jumps over the lazy dog " * 30000)[:1 << 20]
        codes = []

        def one():
            with grpc.insecure_channel(pod.address, options=[
                    ("grpc.max_send_message_length", 8 << 20)]) as channel:
                try:
                    list(runtime_stub(channel).Generate(runtime_pb2.GenerateRequest(
                        text=text, sampling=runtime_pb2.SamplingConfig(max_new_tokens=1)),
                        timeout=600))
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)
        with HealthProbe(pod.address) as probe:
            threads = [threading.Thread(target=one) for _ in range(num_prompts)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        return {"prompts": num_prompts, "prompt_chars": len(text),
                "outcomes": {code: codes.count(code) for code in sorted(set(codes))},
                "health_p99_ms": 1000 * p99(probe.latencies_s),
                "health_max_ms": 1000 * max(probe.latencies_s)}
    finally:
        pod.stop()


def bench_step_fault(model: Path, work: Path, num_streams: int) -> dict:
    pod = RuntimePod(pod_dir(work, "fault"), str(model), env={FAULT_ENV: f"0:{WARM_UP_STEPS + 40}"})
    try:
        pod.wait_serving()
        last_chunk, ended, codes = [], [], []

        def one(index):
            with grpc.insecure_channel(pod.address) as channel:
                try:
                    for _ in runtime_stub(channel).Generate(
                            token_request([9, index + 1], 400), timeout=120):
                        last_chunk.append(time.monotonic())
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)
                ended.append(time.monotonic())
        threads = [threading.Thread(target=one, args=(i,)) for i in range(num_streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"streams": num_streams,
                "outcomes": {code: codes.count(code) for code in sorted(set(codes))},
                "all_ended_after_fault_ms": 1000 * (max(ended) - max(last_chunk))}
    finally:
        pod.stop()


def table(results: dict) -> str:
    r, c, o, g, f = (results[k] for k in ("resume", "churn", "overload", "large_prompts",
                                          "step_fault"))
    rows = [
        ("streams killed / resumed", f"{r['killed_mid_stream']} / {r['resumed']}"),
        ("  duplicated / missing tokens", f"{r['duplicated_tokens']} / {r['missing_tokens']}"),
        ("  tokens differing from an uninterrupted run",
         str(r["tokens_differing_from_uninterrupted"])),
        ("cancels / deadlines / client kills",
         f"{c['cancels']} / {c['deadlines']} / {c['client_kills']}"),
        ("  leaked blocks / leaked requests", f"{c['leaked_blocks']} / {c['leaked_requests']}"),
        (f"overload {o['requests']} requests, queue {o['queue_size']}: refused",
         f"{o['refused']} (p99 {o['refusal_p99_ms']:.1f} ms)"),
        ("  admitted / completed / other errors",
         f"{o['admitted']} / {o['admitted_complete']} / {o['other_errors']}"),
        ("  health p99 / max", f"{o['health_p99_ms']:.1f} / {o['health_max_ms']:.1f} ms"),
        (f"health under {g['prompts']} x 1 MiB prompts p99 / max",
         f"{g['health_p99_ms']:.1f} / {g['health_max_ms']:.1f} ms"),
        (f"injected step fault, {f['streams']} live streams", json.dumps(f["outcomes"])),
        ("  every stream ended after the fault", f"{f['all_ended_after_fault_ms']:.0f} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--churn-requests", type=int, default=200)
    parser.add_argument("--client-kills", type=int, default=10)
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--large-prompts", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-reliability-") as tmp:
        work = Path(tmp)
        model = make_random_llama(work / "model", num_hidden_layers=2)
        chat_model = make_tiny_chat_llama(work / "chat-model")
        results = {
            "resume": bench_resume(model, work, args.streams, args.max_new_tokens),
            "churn": bench_churn(model, work, args.churn_requests, args.client_kills,
                                 args.seed),
            "overload": bench_overload(model, work, args.queue_size),
            "large_prompts": bench_large_prompts(chat_model, work, args.large_prompts),
            "step_fault": bench_step_fault(model, work, args.streams),
        }
    results["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                          "commit": bench_common.git_commit()}
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
