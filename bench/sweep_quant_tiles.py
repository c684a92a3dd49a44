"""Launch shapes of the quantized decode GEMVs, swept on the GPU: where the tuner's candidate
lists (kernels/quant_tuning.py) come from, and how far they are from the best a wider sweep finds.

For each Llama-3-8B projection (qkv, o, gate_up, down) at the given row counts, every tile
(rows x columns of weight per program, warps) x pipeline stages (1-4) x K split (unsplit, the
split that fills the GPU, twice that) is checked against the plain-torch reference (relative
error under the GPU tests' bound) and timed with the tuner's own clock (a CUDA graph of calls
cycling over weight copies larger than L2). Per projection it prints the best few; per token
(32 layers) the best of the tuner's candidates, the best of the sweep, and the bandwidth floor
of the weight bytes at the measured copy bandwidth, side by side. JSON to --json.

    python3 bench/sweep_quant_tiles.py --kind int4 --rows 1,16,64 --json int4_tiles.json
    python3 bench/sweep_quant_tiles.py --kind fp8 --rows 1 --json fp8_tiles.json

Run 17 (bench/NOTES.md) chose the candidates from this sweep; rerun it when a kernel changes,
since a kernel's best launch shape moves with its code (halving the int4 kernel's instructions
gained nothing until its tiles and stages changed too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}
GROUP = 128
BOUNDS = {"int4": 4e-3, "fp8": 5e-3, "fp8_gemm": 5e-3}           # tests/gpu/test_quant_kernels.py's
STAGES = (1, 2, 3, 4)
# (kind, block_n, block_k, warps): the one-row CUDA-core kernels, then the tensor-core dots
TILES = {
    "int4": [("fma", 16, 256, 1), ("fma", 32, 256, 2), ("fma", 32, 128, 1), ("fma", 64, 128, 2),
             ("fma", 64, 128, 4), ("fma", 128, 128, 4), ("dot", 32, 128, 4), ("dot", 64, 128, 4),
             ("dot", 128, 128, 8), ("dot", 32, 256, 4), ("dot", 64, 256, 4),
             ("dot", 128, 128, 4),
             # the weight's rows as the MMA's rows, a warp per 16 or 32 of them (mma.sync)
             ("swap", 32, 128, 2), ("swap", 64, 128, 4), ("swap", 128, 128, 8),
             ("swap", 128, 128, 4), ("swap", 64, 256, 4), ("swap", 128, 256, 8)],
    "fp8": [("fma", 16, 512, 4), ("fma", 8, 512, 2), ("fma", 16, 256, 1), ("fma", 32, 256, 2),
            ("fma", 8, 1024, 4), ("fma", 16, 512, 2), ("fma", 8, 256, 1)],
    # the decode batch's FP8 GEMM (fp8_gemm.py): (block_m, block_n, block_k, warps), its rows
    # already in e4m3 (as a norm or the row quantization hands them over)
    "fp8_gemm": [(m, n, k, w) for m in (64, 128) for n in (64, 128, 256) for k in (64, 128, 256)
                 for w in (4, 8)],
}


def weights(kind: str, n: int, k: int):
    """(contract tensors for the reference, kernel tensors) of random weights."""
    import torch

    from runtime_service.model.kernels import quant_linear as ql
    if kind == "int4":
        qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda")
        scales = (torch.rand(n, k // GROUP, device="cuda") * 0.02 + 0.002).to(torch.bfloat16)
        zeros = torch.randint(0, 16, (n, k // GROUP), dtype=torch.uint8, device="cuda")
        packed = ql.pack_for_device("int4", {"qweight": qweight, "scales": scales,
                                             "zeros": zeros})
        return (qweight, scales, zeros), (packed["qweight"], scales, zeros)
    qweight = (torch.randn(n, k, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    scales = torch.rand(n, device="cuda") * 1e-3 + 1e-4
    return (qweight, scales), (qweight, scales)


def calls(kind: str):
    """(reference(x, *contract), launch(x, kernel_weights, config)); x is (e4m3 rows, their
    scales) for fp8_gemm."""
    import torch

    from runtime_service.model.kernels import fp8_gemm
    from runtime_service.model.kernels import fp8_row_gemv as fg
    from runtime_service.model.kernels import quant_gemv as qg
    from runtime_service.model.kernels import quant_linear as ql
    if kind == "int4":
        return (lambda x, w: ql.int4_linear_reference(x, *w, GROUP),
                lambda x, w, c, warmup=False: qg.launch_int4(x, *w, GROUP, None, c, warmup))
    if kind == "fp8_gemm":
        return (lambda x, w: (x[0].float() * x[1][:, None]) @ (w[0].float() * w[1][:, None]).T,
                lambda x, w, c, warmup=False: fp8_gemm.launch_fp8_gemm(
                    *x, *w, None, torch.bfloat16, c, warmup))
    return (lambda x, w: ql.fp8_linear_reference(x, *w),
            lambda x, w, c, warmup=False: fg.launch_fp8(x, *w, None, c, warmup=warmup))


def candidates(kind: str, rows: int, n: int, k: int, sms: int):
    import torch

    from runtime_service.model.kernels import fp8_gemm
    from runtime_service.model.kernels import quant_tuning as qt
    if kind == "fp8_gemm":
        return fp8_gemm.fp8_gemm_candidates(rows, n, k, torch.bfloat16)
    if kind == "int4":
        return qt.int4_candidates(rows, n, k, GROUP, sms)
    return [c for c in qt.fp8_candidates(rows, n, k, sms) if c.kind == "fma"]


def sweep_configs(kind: str, rows: int, n: int, k: int, sms: int,
                  tile_kinds: tuple[str, ...] = ("fma", "dot", "swap"),
                  stages_swept: tuple[int, ...] = STAGES):
    import triton

    from runtime_service.model.kernels.gemv import GemvConfig, split_to_fill
    if kind == "fp8_gemm":
        return [GemvConfig("dot", n_, k_, warps, stages, block_m=m_)
                for m_, n_, k_, warps in TILES[kind] for stages in stages_swept
                if (m_ + n_) * k_ * stages <= 200 << 10]        # what fits shared memory
    configs = []
    for tile_kind, block_n, block_k, warps in TILES[kind]:
        if tile_kind not in tile_kinds or (tile_kind == "fma" and rows != 1):
            continue                                # (the CUDA-core kernels take one row)
        fill = split_to_fill(triton.cdiv(n, block_n), k, block_k, sms)
        for split in sorted({1, fill, 2 * fill}):
            if triton.cdiv(k, block_k) < 4 * split:
                continue
            configs += [GemvConfig(tile_kind, block_n, block_k, warps, stages, split)
                        for stages in stages_swept]
    return configs


def time_configs(configs, x, contract, kernel_w, copies, reference, launch, bound):
    """[(config, us, relative error)] of the configs that run and compute the right thing."""
    from runtime_service.model.kernels.tuning_clock import graph_time_per_call_us, precompile
    precompile(lambda c: launch(x, kernel_w, c, True), configs)     # all at once, in parallel
    ref = reference(x, contract).float()
    timed = []
    for config in configs:
        call = lambda x_, w, c=config: launch(x_, w, c)  # noqa: E731
        try:
            out = call(x, kernel_w).float()
            err = ((out - ref).norm() / ref.norm()).item()
            if err > bound:
                print(f"  WRONG {config}: relative error {err:.2e}", flush=True)
                continue
            timed.append((config, graph_time_per_call_us(call, x, copies), err))
        except Exception as exc:  # noqa: BLE001 - a shape this GPU cannot run is skipped
            print(f"  FAIL {config}: {str(exc)[:200]}", flush=True)
    return sorted(timed, key=lambda item: item[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(TILES), default="int4")
    parser.add_argument("--rows", default="1")
    parser.add_argument("--kinds", default="fma,dot,swap",
                        help="tile kinds swept beside the tuner's candidates")
    parser.add_argument("--stages", default=",".join(map(str, STAGES)))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    tile_kinds = tuple(args.kinds.split(","))
    stages_swept = tuple(int(s) for s in args.stages.split(","))
    row_counts = [int(r) for r in args.rows.split(",")]
    if args.kind == "fp8_gemm" and min(row_counts) <= 64:
        parser.error("the fp8_gemm sweep is of decode batches past 64 rows")
    if args.kind == "fp8" and row_counts != [1]:
        parser.error("the fp8 sweep is of the one-row kernel: --rows 1")
    import torch
    if not torch.cuda.is_available():
        print("sweep_quant_tiles needs a CUDA GPU", file=sys.stderr)
        return 2

    from bench_common import git_commit
    from decode_common import copy_bandwidth
    from runtime_service.model.kernels.tuning_clock import copies_beyond_l2
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bandwidth = copy_bandwidth("cuda")
    reference, launch = calls(args.kind)
    report = {"bench": "sweep_quant_tiles", "kind": args.kind, "commit": git_commit(),
              "gpu": torch.cuda.get_device_name(0), "copy_bandwidth_bytes_per_s": bandwidth,
              "rows": {}}
    started = time.perf_counter()
    for rows in row_counts:
        per_token = {"candidates_ms": 0.0, "sweep_ms": 0.0, "floor_ms": 0.0}
        shapes = {}
        for name, (n, k) in SHAPES.items():
            contract, kernel_w = weights(args.kind, n, k)
            copies = [kernel_w] + [tuple(t.clone() for t in kernel_w)
                                   for _ in range(copies_beyond_l2(kernel_w[0]) - 1)]
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            if args.kind == "fp8_gemm":
                from runtime_service.model.kernels.quant_linear import (
                    quantize_rows_fp8_reference)
                x = quantize_rows_fp8_reference(x)
            tuner = candidates(args.kind, rows, n, k, sms)
            swept = sweep_configs(args.kind, rows, n, k, sms, tile_kinds, stages_swept)
            timed = time_configs(list(dict.fromkeys(tuner + swept)),
                                 x, contract, kernel_w, copies, reference, launch,
                                 BOUNDS[args.kind])
            best_tuner = min((us for c, us, _ in timed if c in tuner), default=float("nan"))
            nbytes = sum(t.numel() * t.element_size() for t in kernel_w)
            floor_us = nbytes / bandwidth * 1e6
            per_token["candidates_ms"] += 32 * best_tuner / 1e3
            per_token["sweep_ms"] += 32 * timed[0][1] / 1e3
            per_token["floor_ms"] += 32 * floor_us / 1e3
            shapes[name] = {"floor_us": floor_us, "best_candidate_us": best_tuner,
                            "best": [{"config": str(c), "us": us, "rel_err": err,
                                      "candidate": c in tuner} for c, us, err in timed[:10]],
                            "configs_timed": len(timed)}
            print(f"rows {rows} {name}: floor {floor_us:.1f} us, candidates {best_tuner:.1f} us, "
                  f"sweep {timed[0][1]:.1f} us ({timed[0][0]})", flush=True)
            del copies
        report["rows"][str(rows)] = {"per_token": per_token, "shapes": shapes}
    print(f"\n{args.kind}: ms of linears per token (32 layers, qkv + o + gate_up + down)")
    print(f"{'rows':>4}  {'candidates':>10}  {'sweep':>8}  {'floor':>8}")
    for rows, entry in report["rows"].items():
        t = entry["per_token"]
        print(f"{rows:>4}  {t['candidates_ms']:10.3f}  {t['sweep_ms']:8.3f}  {t['floor_ms']:8.3f}")
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
