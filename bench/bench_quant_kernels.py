"""Quantized decode linears on the GPU: Kiln's int4 / int8 / fp8 kernels beside cuBLAS bf16 and
torch's own quantized matmuls, summed over one token of the Llama-3-8B shape, same run.

For each projection (qkv, o, gate_up, down; 32 layers) and the bf16 lm_head, at 1 and 64 rows:
median GPU time per call inside a CUDA graph, each call reading another weight copy (copies
together beyond L2, as decode streams them). Per method, the per-token sum
32 x (qkv + o + gate_up + down) + lm_head, beside the bandwidth floor of its bytes (weights as
stored, quantized, plus the bf16 lm_head) over the device copy bandwidth measured in the same
run. A table last; JSON to --json.

    python3 bench/bench_quant_kernels.py --json quant_kernels.json
    python3 bench/bench_quant_kernels.py --rows 1 --methods kiln_int4,cublas_bf16

Methods: cublas_bf16 (F.linear), kiln_bf16 (kernels.gemv), kiln_int4 (group 128, zero points),
kiln_int8, kiln_fp8 (per-token activation quantization included), kiln_fp8_rows (rows quantized
beforehand, as a norm hands them to the FP8 linears past 64 rows: the matmul alone, cuBLAS or
fp8_gemm.py's tile, whichever the tuner times faster), torch_int4 (`_weight_int4pack_mm`,
group 128), torch_fp8 (`torch._scaled_mm` row-wise, activations quantized beforehand: the
matmul alone, with fast accumulation as Kiln calls it), torch_fp8_precise (the same with its
sums moved to float32 every few K steps) and torch_fp8_tensorwise (one scale per operand:
cuBLAS's other fp8 path, whose product a consumer would scale by row and channel itself; the
check applies those scales after the call). Kiln's methods run the lm_head through kiln_bf16,
torch's through cuBLAS.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import git_commit  # noqa: E402
from decode_common import SHAPES, copy_bandwidth, log  # noqa: E402
from bench_gemv import projections  # noqa: E402
from runtime_service.model.kernels import GEMV_ROW_LIMIT  # noqa: E402  (Triton-free)

LAYER_PROJECTIONS = ("qkv", "o", "gate_up", "down")
GROUP = 128
METHODS = ("cublas_bf16", "kiln_bf16", "kiln_int4", "kiln_int8", "kiln_fp8", "kiln_fp8_rows",
           "torch_int4", "torch_fp8", "torch_fp8_precise", "torch_fp8_tensorwise")
FP8_METHODS = ("kiln_fp8", "kiln_fp8_rows", "torch_fp8", "torch_fp8_precise",
               "torch_fp8_tensorwise")
ROW_CODE_METHODS = ("torch_fp8", "torch_fp8_precise", "torch_fp8_tensorwise", "kiln_fp8_rows")
GRAPH_TARGET_US = 1000


def make_weights(method: str, n: int, k: int) -> tuple:
    """One copy of the tensors `method` reads for an [N, K] linear (random: speed does not
    depend on the values)."""
    device = "cuda"
    if method in ("cublas_bf16", "kiln_bf16"):
        return (torch.empty(n, k, dtype=torch.bfloat16, device=device).normal_(0, k ** -0.5),)
    if method == "kiln_int4":          # random bytes: already `pack_for_device`'s layout
        return (torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=device),
                (torch.rand(n, k // GROUP, device=device) * 0.01).to(torch.bfloat16),
                torch.randint(0, 16, (n, k // GROUP), dtype=torch.uint8, device=device))
    if method == "kiln_int8":
        return (torch.randint(-128, 128, (n, k), dtype=torch.int8, device=device),
                torch.rand(n, device=device) * 0.01)
    if method in FP8_METHODS:
        return (torch.randn(n, k, device=device).to(torch.float8_e4m3fn),
                torch.rand(n, device=device) * 0.01)
    if method == "torch_int4":
        packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=device)
        return (torch.ops.aten._convert_weight_to_int4pack(packed, 8),
                (torch.rand(k // GROUP, n, 2, device=device) * 0.01).to(torch.bfloat16))
    raise ValueError(f"unknown method {method!r}")


def caller(method: str):
    """call(x, weights) -> y for `method`; x is bf16, or (xq, x_scales) for torch_fp8 and
    kiln_fp8_rows."""
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels.gemv import gemv

    if method == "cublas_bf16":
        return lambda x, w: torch.nn.functional.linear(x, w[0])
    if method == "kiln_bf16":
        return lambda x, w: gemv(x, w[0])
    if method == "kiln_int4":
        return lambda x, w: ql.int4_linear(x, *w, GROUP)
    if method == "kiln_int8":
        return lambda x, w: ql.int8_linear(x, *w)
    if method == "kiln_fp8":
        return lambda x, w: ql.fp8_linear(x, *w)
    if method == "kiln_fp8_rows":
        return lambda xs, w: ql.fp8_linear_of_codes(xs[0], xs[1], *w, None, torch.bfloat16)
    if method == "torch_int4":
        return lambda x, w: torch.ops.aten._weight_int4pack_mm(x, w[0], GROUP, w[1])
    if method in ("torch_fp8", "torch_fp8_precise"):
        fast = method == "torch_fp8"
        return lambda xs, w: torch._scaled_mm(xs[0], w[0].t(), scale_a=xs[1],
                                              scale_b=w[1][None, :], out_dtype=torch.bfloat16,
                                              use_fast_accum=fast)
    if method == "torch_fp8_tensorwise":
        one = torch.ones((), device="cuda")
        return lambda xs, w: torch._scaled_mm(xs[0], w[0].t(), scale_a=one, scale_b=one,
                                              out_dtype=torch.bfloat16, use_fast_accum=True)
    raise ValueError(f"unknown method {method!r}")


def reference(method: str, x: torch.Tensor, w: tuple) -> torch.Tensor | None:
    from runtime_service.model.kernels import quant_linear as ql

    if method == "kiln_int4":          # make_weights' bytes are in the kernels' layout
        contract = ql.contract_layout("int4", {"qweight": w[0], "scales": w[1]})["qweight"]
        return ql.int4_linear_reference(x, contract, w[1], w[2], GROUP)
    if method == "kiln_int8":
        return ql.int8_linear_reference(x, *w)
    if method in FP8_METHODS:
        return ql.fp8_linear_reference(x, *w)
    if method in ("cublas_bf16", "kiln_bf16"):
        return x.float() @ w[0].float().T
    return None


def stored_bytes(method: str, n: int, k: int) -> int:
    if method in ("cublas_bf16", "kiln_bf16"):
        return 2 * n * k
    if method in ("kiln_int4", "torch_int4"):
        return n * k // 2 + 3 * n * (k // GROUP)       # packed nibbles, bf16 scales, zeros
    return n * k + 4 * n                                # one byte per weight, float32 scales


def time_case(method: str, n: int, k: int, rows: int, l2_bytes: int) -> dict:
    from runtime_service.model.kernels.tuning_clock import graph_time_per_call_us

    first = make_weights(method, n, k)
    size = sum(t.numel() * t.element_size() for t in first)
    copies = [first] + [make_weights(method, n, k)
                        for _ in range(max(1, math.ceil(3 * l2_bytes / size)) - 1)]
    x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
    call = caller(method)
    if method in ROW_CODE_METHODS:
        from runtime_service.model.kernels.quant_convert import quantize_rows_fp8

        xq, x_scales = quantize_rows_fp8(x)
        x_in = (xq, x_scales if method == "kiln_fp8_rows" else x_scales[:, None].contiguous())
    else:
        x_in = x
    case = {"method": method, "n": n, "k": k, "rows": rows, "weight_copies": len(copies)}
    expected = reference(method, x, first)
    got = call(x_in, first)
    if method == "torch_fp8_tensorwise":        # the scales a consumer would apply
        got = got.float() * x_in[1] * first[1][None, :]
    if expected is not None:
        case["rel_err_vs_reference"] = ((got.float() - expected.float()).norm()
                                        / expected.float().norm()).item()
    per_call_us = max(1.0, stored_bytes(method, n, k) / 3e12 * 1e6)
    calls = len(copies) * max(1, math.ceil(GRAPH_TARGET_US / per_call_us / len(copies)))
    case["us"] = graph_time_per_call_us(call, x_in, copies, calls=calls, replays=7)
    case["bytes_per_s"] = stored_bytes(method, n, k) / case["us"] * 1e6
    return case


def per_token(cases: list[dict], method: str, rows: int, layers: int, bandwidth: float) -> dict:
    mine = {c["proj"]: c for c in cases if c["method"] == method and c["rows"] == rows}
    head_method = ("kiln_bf16" if method.startswith("kiln") and rows <= GEMV_ROW_LIMIT
                   else "cublas_bf16")
    head = next(c for c in cases if c["method"] == head_method and c["rows"] == rows
                and c["proj"] == "lm_head")
    ms = (layers * sum(mine[p]["us"] for p in LAYER_PROJECTIONS) + head["us"]) / 1e3
    weight_bytes = (layers * sum(stored_bytes(method, mine[p]["n"], mine[p]["k"])
                                 for p in LAYER_PROJECTIONS)
                    + stored_bytes("cublas_bf16", head["n"], head["k"]))
    return {"method": method, "rows": rows, "ms_per_token": ms,
            "floor_ms": weight_bytes / bandwidth * 1e3, "weight_bytes": weight_bytes}


def table(report: dict) -> str:
    lines = [f"{'method':12s} {'rows':>4s} {'ms/token':>9s} {'floor ms':>9s} {'of floor':>9s}"]
    for row in report["per_token"]:
        lines.append(f"{row['method']:12s} {row['rows']:4d} {row['ms_per_token']:9.3f} "
                     f"{row['floor_ms']:9.3f} {row['floor_ms'] / row['ms_per_token']:9.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,64")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    row_counts = [int(r) for r in args.rows.split(",")]
    methods = args.methods.split(",")
    # kiln_bf16 (the whole bf16 GEMV tuner) runs the lm_head alone unless asked for by name.
    layer_methods = [m for m in methods if m != "kiln_bf16" or "--methods" in (argv or sys.argv)]
    for needed in ("cublas_bf16", "kiln_bf16"):   # the lm_head of every per-token sum
        if needed not in methods:
            methods.append(needed)
    shape = SHAPES["llama3-8b"]
    props = torch.cuda.get_device_properties(0)
    bandwidth = copy_bandwidth("cuda")
    log(f"{props.name}: copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    cases, failures = [], []
    for proj, (n, k) in projections(shape).items():
        for method in (layer_methods if proj != "lm_head" else ("cublas_bf16", "kiln_bf16")):
            for rows in row_counts:
                if method == "kiln_bf16" and rows > GEMV_ROW_LIMIT:
                    continue                  # past the GEMV's rows the lm_head is cuBLAS's
                try:
                    case = time_case(method, n, k, rows, props.L2_cache_size)
                except Exception as exc:  # noqa: BLE001 - a baseline this build lacks is noted
                    failures.append({"method": method, "proj": proj, "rows": rows,
                                     "error": repr(exc)})
                    log(f"{method} {proj} M={rows} failed: {exc!r}")
                    traceback.print_exc()
                    continue
                case["proj"] = proj
                cases.append(case)
                log(f"{proj:8s} M={rows:<3d} {method:12s} {case['us']:8.1f} us "
                    f"{case['bytes_per_s'] / 1e12:5.2f} TB/s "
                    f"err {case.get('rel_err_vs_reference', float('nan')):.1e}")
                torch.cuda.empty_cache()
    summary = []
    for method in layer_methods:
        for rows in row_counts:
            try:
                summary.append(per_token(cases, method, rows, shape["num_hidden_layers"],
                                         bandwidth))
            except (KeyError, StopIteration):
                continue                      # a projection failed above
    from runtime_service.model.kernels import quant_tuning

    report = {"gpu": props.name, "commit": git_commit(), "torch": torch.__version__,
              "copy_bandwidth_bytes_per_s": bandwidth, "group_size": GROUP, "cases": cases,
              "failures": failures, "per_token": summary,
              "tuned": {str(k): str(v) for k, v in quant_tuning.tuned_configs().items()}}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
