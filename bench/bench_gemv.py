"""cuBLAS vs Kiln's Triton GEMV on decode-sized linears, same GPU, same run.

For every projection of the Llama-2-7B and Llama-3-8B shapes (qkv, o, gate_up, down, lm_head)
and 1, 2, 4, 8 rows of input: median GPU time per call of torch.nn.functional.linear (cuBLAS)
and of kernels.gemv (tuned on its first call), the bytes each moves per second, and the device
copy bandwidth measured in the same run as the floor. Then, per model and row count, the GEMM
time of one decode step (layers x (qkv + o + gate_up + down) + lm_head) for both, against the
weight-streaming floor. A table last; JSON to --json.

    python3 bench/bench_gemv.py --json gemv.json
    python3 bench/bench_gemv.py --models llama2-7b --rows 1,16

Each call is timed inside a CUDA graph (as decode runs), replayed with CUDA events around it, and
reads a different copy of the weight from the previous call: the copies together exceed the L2
cache several times over, so every call streams its weight from HBM.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import aligned_rows, git_commit  # noqa: E402
from decode_common import SHAPES, copy_bandwidth, log  # noqa: E402

MODELS = ("llama2-7b", "llama3-8b")
GRAPH_TARGET_US = 1000          # GPU time per graph replay: far above the events' resolution
DEFAULT_L2_BYTES = 50 << 20     # H100


def projections(shape: dict) -> dict[str, tuple[int, int]]:
    """(N, K) of each linear layer of one decoder layer, plus the LM head."""
    hidden, heads = shape["hidden_size"], shape["num_attention_heads"]
    head_dim = hidden // heads
    q_size, kv_size = heads * head_dim, shape["num_key_value_heads"] * head_dim
    return {"qkv": (q_size + 2 * kv_size, hidden), "o": (hidden, q_size),
            "gate_up": (2 * shape["intermediate_size"], hidden),
            "down": (hidden, shape["intermediate_size"]),
            "lm_head": (shape["vocab_size"], hidden)}


def cublas(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight)


def triton_gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    from runtime_service.model.kernels.gemv import gemv

    return gemv(x, weight)


def time_per_call_us(call, x: torch.Tensor, weights: list[torch.Tensor], calls: int,
                     replays: int) -> float:
    from runtime_service.model.kernels.tuning_clock import graph_time_per_call_us

    return graph_time_per_call_us(call, x, weights, calls, replays)


def bench_projection(model: str, name: str, n: int, k: int, row_counts: list[int],
                     dtype: torch.dtype, l2_bytes: int, replays: int) -> list[dict]:
    from runtime_service.model.kernels.gemv import tuned_config

    weight_bytes = n * k * dtype.itemsize
    copies = max(2, math.ceil(3 * l2_bytes / weight_bytes))
    weights = [torch.empty(n, k, dtype=dtype, device="cuda").normal_(0, k ** -0.5)
               for _ in range(copies)]
    per_call_us = weight_bytes / 3e12 * 1e6                      # a guess, only to size graphs
    calls = copies * max(1, math.ceil(GRAPH_TARGET_US / per_call_us / copies))
    cases = []
    for rows in row_counts:
        x = torch.randn(rows, k, dtype=dtype, device="cuda")
        moved = weight_bytes + (rows * k + rows * n) * dtype.itemsize
        expected = cublas(x, weights[0]).float()
        got = triton_gemv(x, weights[0]).float()
        rel_err = ((got - expected).norm() / expected.norm()).item()
        cublas_us = time_per_call_us(cublas, x, weights, calls, replays)
        gemv_us = time_per_call_us(triton_gemv, x, weights, calls, replays)
        case = {"model": model, "proj": name, "n": n, "k": k, "rows": rows,
                "weight_copies": copies, "calls_per_graph": calls,
                "cublas_us": cublas_us, "gemv_us": gemv_us,
                "cublas_bytes_per_s": moved / cublas_us * 1e6,
                "gemv_bytes_per_s": moved / gemv_us * 1e6,
                "speedup": cublas_us / gemv_us, "gemv_config": str(tuned_config(x, weights[0])),
                "gemv_rel_err_vs_cublas": rel_err}
        log(f"{model} {name:8s} M={rows}: cuBLAS {cublas_us:7.1f} us, GEMV {gemv_us:7.1f} us "
            f"({case['speedup']:.2f}x) [{case['gemv_config']}]")
        cases.append(case)
    del weights
    torch.cuda.empty_cache()
    return cases


def per_step(cases: list[dict], model: str, rows: int, bandwidth: float) -> dict:
    """GEMM time of one decode step (every layer's projections and the LM head) for both."""
    shape = SHAPES[model]
    layers = shape["num_hidden_layers"]
    mine = {c["proj"]: c for c in cases if c["model"] == model and c["rows"] == rows}
    result = {}
    for side in ("cublas", "gemv"):
        per_layer = sum(mine[p][f"{side}_us"] for p in ("qkv", "o", "gate_up", "down"))
        result[f"{side}_ms"] = (layers * per_layer + mine["lm_head"][f"{side}_us"]) / 1e3
    weight_bytes = 2 * (layers * sum(mine[p]["n"] * mine[p]["k"] for p in ("qkv", "o", "gate_up",
                                                                            "down"))
                        + mine["lm_head"]["n"] * mine["lm_head"]["k"])
    result["floor_ms"] = weight_bytes / bandwidth * 1e3
    return result


def table(report: dict) -> str:
    bandwidth = report["copy_bandwidth_bytes_per_s"]
    header = ("model", "proj", "N", "K", "M", "cuBLAS us", "TB/s", "GEMV us", "TB/s", "speedup",
              "GEMV config")
    rows = [header]
    for c in report["cases"]:
        rows.append((c["model"], c["proj"], str(c["n"]), str(c["k"]), str(c["rows"]),
                     f"{c['cublas_us']:.1f}", f"{c['cublas_bytes_per_s'] / 1e12:.2f}",
                     f"{c['gemv_us']:.1f}", f"{c['gemv_bytes_per_s'] / 1e12:.2f}",
                     f"{c['speedup']:.2f}x"
                     + (" MISMATCH" if c["gemv_rel_err_vs_cublas"] > 1e-2 else ""),
                     c["gemv_config"]))
    lines = [f"== decode GEMV vs cuBLAS on {report['device_name']} (copy bandwidth "
             f"{bandwidth / 1e12:.2f} TB/s read+write) =="]
    lines += aligned_rows(rows)
    lines.append("GEMM time per decode step (all layers + lm_head):")
    for model, by_rows in report["per_step"].items():
        for rows, step in by_rows.items():
            lines.append(f"  {model} M={rows}: cuBLAS {step['cublas_ms']:.2f} ms, GEMV "
                         f"{step['gemv_ms']:.2f} ms ({step['cublas_ms'] / step['gemv_ms']:.2f}x), "
                         f"floor {step['floor_ms']:.2f} ms (weights / copy bandwidth)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--rows", default="1,2,4,8", help="comma-separated row counts (<= 64)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gemv needs a CUDA GPU", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    models = [m for m in args.models.split(",") if m]
    row_counts = [int(r) for r in args.rows.split(",") if r]
    dtype = getattr(torch, args.dtype)
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 0) or DEFAULT_L2_BYTES
    bandwidth = copy_bandwidth("cuda")
    log(f"{props.name}: copy bandwidth {bandwidth / 1e12:.2f} TB/s, L2 {l2_bytes >> 20} MiB")
    report: dict = {"device_name": props.name, "torch": torch.__version__,
                    "triton": importlib.metadata.version("triton"), "commit": git_commit(),
                    "dtype": args.dtype, "copy_bandwidth_bytes_per_s": bandwidth,
                    "l2_cache_bytes": l2_bytes, "cases": [], "per_step": {}}
    with torch.inference_mode():
        for model in models:
            for name, (n, k) in projections(SHAPES[model]).items():
                report["cases"] += bench_projection(model, name, n, k, row_counts, dtype,
                                                    l2_bytes, args.replays)
            report["per_step"][model] = {str(rows): per_step(report["cases"], model, rows,
                                                             bandwidth)
                                         for rows in row_counts}
    text = table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
