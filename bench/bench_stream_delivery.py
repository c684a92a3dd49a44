"""Handing step outputs to a gRPC pod's event loop: Kiln's per-loop mailbox against waking the
loop once per output (`call_soon_threadsafe` per output, the plain asyncio way), same run.

A pod's step-loop thread produces one output per live stream per step; the event loop, on the
same GIL, turns them into gRPC messages. On an H100 the pod reached 7,983 tok/s at 256 streams
against 11,439 in-process (bench/NOTES.md, run 8). This isolates the hand-off: a thread posts
one output to each of N streams per step, then releases the GIL for the step's GPU time (a
sleep), while N asyncio consumers drain their streams. It reports the wall time of all steps,
the event loop thread's CPU time, and the step rate the producer kept. Median of --repeats.

    python3 bench/bench_stream_delivery.py --json bench/results/stream_delivery.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime_service.engine.request import RequestOutput  # noqa: E402
from runtime_service.engine.request_stream import RequestStream  # noqa: E402


def per_output_wakeup(stream: RequestStream, item) -> None:
    """The peer: one `call_soon_threadsafe` per output."""
    stream._mailbox._loop.call_soon_threadsafe(stream._async_queue.put_nowait, item)


async def one_run(streams_n: int, steps: int, gpu_ms: float, mode: str) -> dict:
    streams = [RequestStream(f"r{i}", lambda _: True) for i in range(streams_n)]
    post = RequestStream._push if mode == "kiln" else per_output_wakeup

    def step_loop():
        for step in range(steps):
            for i, stream in enumerate(streams):
                post(stream, RequestOutput(f"r{i}", step, (step,), finished=step == steps - 1))
            time.sleep(gpu_ms / 1e3)

    async def consume(stream):
        return sum([len(batch) async for batch in stream.batches()])

    start, loop_cpu_start = time.perf_counter(), time.thread_time()
    producer = threading.Thread(target=step_loop)
    producer.start()
    delivered = await asyncio.gather(*(consume(s) for s in streams))
    producer.join()
    wall = time.perf_counter() - start
    assert sum(delivered) == streams_n * steps
    return {"wall_s": wall, "loop_cpu_s": time.thread_time() - loop_cpu_start,
            "steps_per_s": steps / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gpu-ms", type=float, default=2.0,
                        help="GIL-free pause per step standing in for its GPU time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = {"steps": args.steps, "gpu_ms": args.gpu_ms, "repeats": args.repeats,
              "floor_wall_s": args.steps * args.gpu_ms / 1e3, "results": {}}
    print(f"{'streams':>7}  {'side':<22} {'wall s':>7} {'loop CPU s':>10} {'steps/s':>8}")
    for n in args.streams:
        for mode, label in (("kiln", "Kiln mailbox"), ("peer", "per-output wakeup")):
            runs = [asyncio.run(one_run(n, args.steps, args.gpu_ms, mode))
                    for _ in range(args.repeats)]
            median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            report["results"].setdefault(str(n), {})[mode] = median
            print(f"{n:>7}  {label:<22} {median['wall_s']:>7.3f} {median['loop_cpu_s']:>10.3f} "
                  f"{median['steps_per_s']:>8.0f}")
        sides = report["results"][str(n)]
        print(f"{n:>7}  peer/Kiln wall {sides['peer']['wall_s'] / sides['kiln']['wall_s']:.2f}x, "
              f"loop CPU {sides['peer']['loop_cpu_s'] / sides['kiln']['loop_cpu_s']:.2f}x "
              f"(floor {report['floor_wall_s']:.3f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
