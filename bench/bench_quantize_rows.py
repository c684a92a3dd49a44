"""The per-row fp8 quantization of an FP8 engine's activations (`quantize_rows_fp8`) beside the
bandwidth floor of its bytes, same run.

Past 64 rows an FP8 decoder layer quantizes twice in launches of their own: the attention output
before o (K = 4096 on Llama-3-8B) and SwiGLU's [gate | up] before down (gated, K = 14336, the
activation formed as it reads). Run 27b timed them at 10.7 us a call on average at 256 rows on an
H100, about three times their bytes' time. Each case runs in a CUDA graph over row copies larger
than L2 (as decode meets them: just written by the launch before, but here cold), median us a
call; the floor is the bytes read and written over the copy bandwidth measured here.

    python3 bench/bench_quantize_rows.py --json quantize_rows.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import git_commit  # noqa: E402
from decode_common import copy_bandwidth, log  # noqa: E402

CASES = (("o input", 4096, False), ("down input (gated)", 14336, True))
ROWS = (64, 256, 1024, 8192)


def time_case(rows: int, k: int, gated: bool, l2_bytes: int, bandwidth: float) -> dict:
    from runtime_service.model.kernels.quant_convert import quantize_rows_fp8
    from runtime_service.model.kernels.tuning_clock import graph_time_per_call_us

    width = 2 * k if gated else k
    size = rows * width * 2
    copies = [torch.randn(rows, width, device="cuda").to(torch.bfloat16)
              for _ in range(max(1, math.ceil(3 * l2_bytes / size)))]
    us = graph_time_per_call_us(lambda _, x: quantize_rows_fp8(x, gated=gated), copies[0],
                                copies, replays=7)
    moved = size + rows * k + 4 * rows              # rows read; codes and scales written
    return {"rows": rows, "k": k, "gated": gated, "us": us,
            "floor_us": moved / bandwidth * 1e6, "bytes": moved}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(map(str, ROWS)))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    bandwidth = copy_bandwidth("cuda")
    log(f"{props.name}: copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    cases = []
    print(f"{'case':20s} {'rows':>5s} {'kiln us':>8s} {'floor us':>9s} {'of floor':>9s}")
    for name, k, gated in CASES:
        for rows in (int(r) for r in args.rows.split(",")):
            case = {"case": name, **time_case(rows, k, gated, props.L2_cache_size, bandwidth)}
            cases.append(case)
            print(f"{name:20s} {rows:5d} {case['us']:8.1f} {case['floor_us']:9.1f} "
                  f"{case['floor_us'] / case['us']:9.0%}", flush=True)
            torch.cuda.empty_cache()
    report = {"gpu": props.name, "commit": git_commit(), "torch": torch.__version__,
              "copy_bandwidth_bytes_per_s": bandwidth, "cases": cases}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
