"""Streaming through Kiln's gRPC runtime vs calling the executor in-process, side by side.

Same engine, same prompts, same max_new_tokens; only the path differs. For 1, 16 and 64
concurrent streams it reports total output tokens/s and per-token latency (the median gap
between consecutive tokens of a stream, and time to first token), as the median of --repeats
runs. The difference is what the server, protobuf and the loopback socket cost.

    python bench/bench_grpc_streaming.py --out bench/results/grpc_streaming.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_engine(work: Path, args) -> str:
    from support.random_llama import make_random_llama
    model = make_random_llama(work / "hf", vocab_size=args.vocab, hidden_size=args.hidden,
                              intermediate_size=args.hidden * 4, num_hidden_layers=args.layers,
                              num_attention_heads=args.hidden // 64,
                              num_key_value_heads=max(1, args.hidden // 256),
                              max_position_embeddings=4096)
    done = subprocess.run(
        [sys.executable, "-m", "builder_service", "build", "--model", str(model), "--store",
         str(work / "store"), "--dtype", "float32", "--target-device", "cpu",
         "--max-batch-size", "64", "--max-seq-len", "1024", "--max-input-len", "256"],
        capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["uri"]


def prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    return [[(7 * i + 13 * j) % vocab for j in range(length)] for i in range(n)]


def summarize(arrivals: list[list[float]], start: float, end: float) -> dict:
    gaps = [b - a for times in arrivals for a, b in zip(times, times[1:])]
    tokens = sum(len(t) for t in arrivals)
    return {"tokens_per_s": tokens / (end - start),
            "per_token_latency_ms": 1000 * statistics.median(gaps) if gaps else None,
            "ttft_ms": 1000 * statistics.median(t[0] - start for t in arrivals if t),
            "tokens": tokens}


async def run_grpc(address: str, batch: list[list[int]], new_tokens: int) -> dict:
    """One batch of streams on a channel of its own, connected before the clock starts."""
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        return await generate_batch(channel, batch, new_tokens)


async def generate_batch(channel, batch: list[list[int]], new_tokens: int,
                         request_ids: list[str] | None = None) -> dict:
    """Streams `batch` at once on an open channel (with `request_ids`, under those ids).
    Clients keep their channels, so no figure includes connecting: a new channel per request
    added a TCP and HTTP/2 handshake to every TTFT (5.7 ms at the median on the 2-core CPU
    here)."""
    from kiln.v1 import runtime_pb2, runtime_pb2_grpc
    stub = runtime_pb2_grpc.RuntimeStub(channel)

    walls: dict[str, tuple[float, float]] = {}

    async def one(prompt, request_id):
        times = []
        request = runtime_pb2.GenerateRequest(
            request_id=request_id, token_ids=runtime_pb2.TokenIds(ids=prompt), streaming=True,
            sampling=runtime_pb2.SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True))
        sent = time.time()
        async for response in stub.Generate(request, timeout=600):
            if response.HasField("chunk"):
                now = time.perf_counter()
                if not times and request_id:
                    walls[request_id] = (sent, time.time())
                times.extend([now] * len(response.chunk.token_ids))
        return times

    start = time.perf_counter()
    arrivals = await asyncio.gather(*(one(p, i) for p, i in
                                      zip(batch, request_ids or [""] * len(batch))))
    # with request ids: when each call began and its first chunk came, on the host's wall
    # clock, to line up with the pod's log (grpc_load.client_split)
    return summarize(arrivals, start, time.perf_counter()) | {"walls": walls}


async def run_inprocess(executor, batch: list[list[int]], new_tokens: int, tag: str) -> dict:
    from runtime_service.engine.request import Request, SamplingParams

    async def one(i, prompt):
        times = []
        stream = executor.submit(Request(f"{tag}-{i}", prompt, SamplingParams(
            max_new_tokens=new_tokens, ignore_eos=True)))
        async for out in stream:
            now = time.perf_counter()
            times.extend([now] * len(out.new_token_ids))
        return times

    start = time.perf_counter()
    arrivals = await asyncio.gather(*(one(i, p) for i, p in enumerate(batch)))
    return summarize(arrivals, start, time.perf_counter())


def median_of(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs if r[key] is not None)
            for key in runs[0] if key not in ("tokens", "walls")} | {"repeats": len(runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from support.kiln_servers import RuntimePod

    from runtime_service.engine.executor import Executor, ExecutorOptions
    from runtime_service.store import pull_engine

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    uri = make_engine(work, args)
    results = {"kiln_grpc": {}, "in_process": {}}
    pod = RuntimePod(work, uri)
    try:
        address = pod.wait_serving()
        for n in args.concurrency:
            batch = prompts(n, args.prompt_len, args.vocab)
            asyncio.run(run_grpc(address, batch, 4))                          # warm
            results["kiln_grpc"][str(n)] = median_of(
                [asyncio.run(run_grpc(address, batch, args.new_tokens)) for _ in range(args.repeats)])
            print("grpc", n, results["kiln_grpc"][str(n)], file=sys.stderr, flush=True)
    finally:
        pod.stop()
    executor = Executor.from_folder(pull_engine(uri, work / "cache"), ExecutorOptions()).start()
    try:
        for n in args.concurrency:
            batch = prompts(n, args.prompt_len, args.vocab)
            asyncio.run(run_inprocess(executor, batch, 4, f"warm{n}"))
            results["in_process"][str(n)] = median_of(
                [asyncio.run(run_inprocess(executor, batch, args.new_tokens, f"r{n}-{k}"))
                 for k in range(args.repeats)])
            print("in-process", n, results["in_process"][str(n)], file=sys.stderr, flush=True)
    finally:
        executor.shutdown()
    report = {
        "benchmark": "grpc_streaming",
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                  "dtype": "float32", "weights": "random"},
        "new_tokens": args.new_tokens, "prompt_len": args.prompt_len,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "device": "cpu"},
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
