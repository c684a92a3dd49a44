"""What one step's hand-over costs the engine core and the pod in `--engine-core process`.

Each decode step the core turns every stream's new RequestOutput into one STEP message
(engine/core_codec.py: JSON of compact lists) and the pod's reader thread turns it back. This
times both halves for a decode step of N streams (one token and a few characters of text each),
against building the N RequestOutputs themselves (what the executor pays in either mode), so
the codec's share of a step is visible. Median of --repeats.

    python bench/bench_core_codec.py --streams 64 256 --json bench/results/core_codec.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import bench_common  # noqa: F401  (puts the repository on sys.path)
from runtime_service.engine import core_codec as codec
from runtime_service.engine.executor_options import ExecutorStats
from runtime_service.engine.request import RequestOutput


def decode_step_outputs(n: int, step: int) -> list[RequestOutput]:
    return [RequestOutput(request_id=f"req-{i:08x}", offset=step, new_token_ids=(1000 + i,),
                          new_text=" word", num_prompt_tokens=128, num_output_tokens=step + 1)
            for i in range(n)]


def time_us(fn, loops: int) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - started) / loops * 1e6


def measure(n: int, loops: int, repeats: int) -> dict:
    outputs = decode_step_outputs(n, 17)
    stats = ExecutorStats(100, 200, n, 0, n, 17, 0, n, 0)
    step = codec.StepMessage(outputs=outputs, stats=stats)
    body = codec.encode_step(step)
    runs = {"build_outputs_us": [], "encode_us": [], "decode_us": []}
    for _ in range(repeats):
        runs["build_outputs_us"].append(time_us(lambda: decode_step_outputs(n, 17), loops))
        runs["encode_us"].append(time_us(lambda: codec.encode_step(step), loops))
        runs["decode_us"].append(time_us(lambda: codec.decode_step(body), loops))
    result = {key: statistics.median(values) for key, values in runs.items()}
    result["message_bytes"] = len(body)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--loops", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = {"commit": bench_common.git_commit(), "results": {}}
    print(f"{'streams':>7} {'build outputs us':>16} {'encode us':>10} {'decode us':>10} "
          f"{'bytes':>8}")
    for n in args.streams:
        result = report["results"][str(n)] = measure(n, args.loops, args.repeats)
        print(f"{n:>7} {result['build_outputs_us']:>16.1f} {result['encode_us']:>10.1f} "
              f"{result['decode_us']:>10.1f} {result['message_bytes']:>8}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
