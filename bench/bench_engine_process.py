"""Where should the engine core run: a thread of the gRPC process (today) or its own process?

The question vLLM v1 answered with a process: the step loop then never waits for the GIL while
the event loop encodes protobuf. This measures the trade on the host alone. A producer plays the
step loop: each step it hands one output per stream to the gRPC side, then releases the GIL for
the step's GPU time (a sleep of --gpu-ms). The gRPC side turns every output into a serialized
`GenerateResponse` chunk, as the servicer does.

  thread   the producer is a thread of the asyncio process and posts through Kiln's
           RequestStream mailbox (engine/request_stream.py), as the pod does now
  process  the producer is a child process: per step it packs the step's token ids into one
           message on a pipe; the asyncio process reads it (loop.add_reader) and fans it out

It reports the wall time of all steps against the floor (steps x gpu-ms), so what the hand-off
and the encoding cost the step loop, and the producer's own time per step (what the engine core
pays to hand a step over). Median of --repeats.

    python bench/bench_engine_process.py --streams 64 256 --json bench/results/engine_process.json
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))

from kiln.v1 import runtime_pb2  # noqa: E402
from runtime_service.engine.request import RequestOutput  # noqa: E402
from runtime_service.engine.request_stream import RequestStream  # noqa: E402


def encode(request_id: str, step: int, token_ids) -> bytes:
    """The servicer's per-output work, roughly: one Chunk message, serialized."""
    chunk = runtime_pb2.Chunk(sequence_index=0, offset=step,
                              token_ids=list(token_ids))
    return runtime_pb2.GenerateResponse(request_id=request_id, chunk=chunk).SerializeToString()


async def thread_run(streams_n: int, steps: int, gpu_ms: float) -> dict:
    streams = [RequestStream(f"r{i}", lambda _: True) for i in range(streams_n)]
    post_s = [0.0]

    def step_loop():
        for step in range(steps):
            started = time.perf_counter()
            for i, stream in enumerate(streams):
                stream._push(RequestOutput(f"r{i}", step, (step,), finished=step == steps - 1))
            post_s[0] += time.perf_counter() - started
            time.sleep(gpu_ms / 1e3)

    async def consume(stream):
        count = 0
        async for batch in stream.batches():
            for output in batch:
                encode(output.request_id, count, output.new_token_ids)
                count += 1
        return count

    start = time.perf_counter()
    producer = threading.Thread(target=step_loop)
    producer.start()
    delivered = await asyncio.gather(*(consume(s) for s in streams))
    producer.join()
    assert sum(delivered) == streams_n * steps
    return {"wall_s": time.perf_counter() - start, "producer_ms_per_step": post_s[0] / steps * 1e3}


def _engine_process(conn, streams_n: int, steps: int, gpu_ms: float) -> None:
    send_s = 0.0
    for step in range(steps):
        started = time.perf_counter()
        tokens = array.array("q", [step] * streams_n)          # one token per stream
        conn.send_bytes(step.to_bytes(8, "little") + tokens.tobytes())
        send_s += time.perf_counter() - started
        time.sleep(gpu_ms / 1e3)
    conn.send_bytes(b"")
    conn.send(send_s / steps * 1e3)


async def process_run(streams_n: int, steps: int, gpu_ms: float) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    queues = [asyncio.Queue() for _ in range(streams_n)]
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def on_readable():
        data = parent.recv_bytes()
        if not data:
            loop.remove_reader(parent.fileno())
            finished.set_result(None)
            return
        step = int.from_bytes(data[:8], "little")
        tokens = array.array("q")
        tokens.frombytes(data[8:])
        for queue, token in zip(queues, tokens):
            queue.put_nowait((step, token))

    async def consume(index: int) -> int:
        for count in range(steps):
            step, token = await queues[index].get()
            encode(f"r{index}", step, (token,))
        return steps

    process = ctx.Process(target=_ready_then_run, args=(child, streams_n, steps, gpu_ms))
    process.start()
    parent.recv_bytes()               # the child is up: time the steps, not the spawn
    start = time.perf_counter()
    loop.add_reader(parent.fileno(), on_readable)
    parent.send_bytes(b"go")
    delivered = await asyncio.gather(*(consume(i) for i in range(streams_n)))
    await finished
    wall = time.perf_counter() - start
    producer_ms = parent.recv()
    process.join()
    assert sum(delivered) == streams_n * steps
    return {"wall_s": wall, "producer_ms_per_step": producer_ms}


def _ready_then_run(conn, streams_n: int, steps: int, gpu_ms: float) -> None:
    """The child's entry: say it is up, wait for the start, run the steps."""
    conn.send_bytes(b"up")
    conn.recv_bytes()
    _engine_process(conn, streams_n, steps, gpu_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gpu-ms", type=float, default=8.0,
                        help="GIL-free pause per step standing in for its GPU time (an 8B "
                        "decode step at 64-256 streams is 6-12 ms on an H200)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    floor = args.steps * args.gpu_ms / 1e3
    report = {"steps": args.steps, "gpu_ms": args.gpu_ms, "repeats": args.repeats,
              "floor_wall_s": floor, "cpu_count": os.cpu_count(), "results": {}}
    print(f"{'streams':>7}  {'engine core':<12} {'wall s':>7} {'over floor':>10} "
          f"{'producer ms/step':>16}")
    for n in args.streams:
        for mode, run in (("thread", thread_run), ("process", process_run)):
            runs = [asyncio.run(run(n, args.steps, args.gpu_ms)) for _ in range(args.repeats)]
            median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            median["over_floor"] = median["wall_s"] / floor - 1
            report["results"].setdefault(str(n), {})[mode] = median
            print(f"{n:>7}  {mode:<12} {median['wall_s']:>7.3f} {median['over_floor']:>9.1%} "
                  f"{median['producer_ms_per_step']:>16.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
