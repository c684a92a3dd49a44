"""Instructions per weight byte in the hot loop of Kiln's decode GEMV kernels, read from their
Hopper machine code, compiled offline: no GPU needed.

Nsight Compute showed the one-row int4 GEMV bound by instruction issue, not by memory
(bench/NOTES.md, run 16a): its loop issues ~16 instructions per weight byte where the bf16 GEMV
issues ~2. This prints that figure for each kernel beside the bf16 GEMV (the peer here: it
streams 4.1 TB/s), so a kernel change can be judged before any device time is spent. A Hopper
SM issues 4 warp-instructions per cycle, so at 1.98 GHz and 132 SMs a kernel needing more than
about 2 instructions per byte per thread-lane cannot reach 4 TB/s.

Needs Triton, whose wheel carries ptxas and nvdisasm (CPU machines here have none installed):

    pip install --target /tmp/tri triton==3.6.0
    PYTHONPATH=/tmp/tri python3 bench/kernel_sass.py --json sass.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_OPCODE = re.compile(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")
_BRANCH = re.compile(r"BRA\s+`\((\.L_x_\d+)\)")


def hot_loop(sass: str) -> list[str]:
    """The opcodes of the longest span from a label to a branch back to it (the main loop)."""
    lines = sass.splitlines()
    labels = {line.split(":")[0]: i for i, line in enumerate(lines) if line.startswith(".L_x_")}
    best = (0, -1)
    for end, line in enumerate(lines):
        match = _BRANCH.search(line)
        start = labels.get(match.group(1)) if match else None
        if start is not None and start < end and end - start > best[1] - best[0]:
            best = (start, end)
    return [m.group(1) for line in lines[best[0]:best[1] + 1] if (m := _OPCODE.search(line))]


def compile_sm90(kernel, signature: dict, constexprs: dict, aligned: list[str],
                 num_warps: int, num_stages: int = 1) -> str:
    """Hopper SASS of `kernel`, with the 16-divisibility hints the JIT gives aligned pointers and
    sizes (`aligned`); without them every load would be one byte wide."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(signature)
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs,
                                        attrs=attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        return subprocess.run([str(nvdisasm), "-c", cubin.name], capture_output=True,
                              text=True, check=True).stdout


def _gemv_cases():
    """(name, kernel, signature, constexprs, aligned, warps, weight bytes per loop pass)."""
    from runtime_service.model.kernels import fp8_row_gemv, gemv, quant_gemv

    common = {"M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "k_per_split": "i32"}
    bf16 = {"X": "*bf16", "W": "*bf16", "Bias": "constexpr", "Out": "*bf16", **common,
            "HAS_BIAS": "constexpr", "GATED": "constexpr", "BLOCK_N": "constexpr",
            "BLOCK_K": "constexpr", "EVEN_K": "constexpr", "NUM_STAGES": "constexpr"}
    int4 = {"X": "*bf16", "QW": "*u8", "Scales": "*bf16", "Zeros": "*u8", "Bias": "constexpr",
            "Out": "*bf16", **common, "HAS_BIAS": "constexpr", "GROUP": "constexpr",
            "GROUPS_PER_TILE": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
            "NUM_STAGES": "constexpr"}
    fp8 = {"X": "*bf16", "QW": "*fp8e4nv", "Scales": "*fp32", "Bias": "constexpr",
           "Out": "*bf16", "Final": "constexpr", "Counters": "constexpr", "Pairs": "constexpr",
           "Amax": "constexpr", "N": "i32", "K": "i32", "k_per_split": "i32", "SPLIT_K": "i32",
           "num_amax": "i32", "HAS_BIAS": "constexpr", "GATED": "constexpr",
           "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "X_BLOCK": "constexpr",
           "EVEN_K": "constexpr", "NUM_STAGES": "constexpr", "TENSOR_CORES": "constexpr",
           "FUSED_SUM": "constexpr", "GATE_AMAX": "constexpr", "AMAX_GIVEN": "constexpr",
           "AMAX_BLOCK": "constexpr"}
    no_amax = dict(Pairs=None, Amax=None, GATE_AMAX=False, AMAX_GIVEN=False, AMAX_BLOCK=1)
    fp8_fused = {**fp8, "Out": "*fp32", "Final": "*bf16", "Counters": "*i32"}
    cases = [("bf16 GEMV (CUDA cores)", gemv._fma_kernel, bf16,
              dict(Bias=None, HAS_BIAS=False, GATED=False, BLOCK_N=8, BLOCK_K=512, EVEN_K=True,
                   NUM_STAGES=1), ["X", "W", "Out", "K", "stride_xm", "k_per_split"], 4,
              8 * 512 * 2)]
    for block_n, block_k, warps in ((16, 256, 1), (32, 256, 2), (128, 128, 4)):
        cases.append((f"int4 g128 one row, n{block_n} k{block_k}", quant_gemv._int4_fma_kernel,
                      int4, dict(Bias=None, HAS_BIAS=False, GROUP=128,
                                 GROUPS_PER_TILE=block_k // 128, BLOCK_N=block_n,
                                 BLOCK_K=block_k, NUM_STAGES=1),
                      ["X", "QW", "Scales", "Zeros", "Out", "K", "stride_xm", "k_per_split"],
                      warps, block_n * block_k // 2))
    int4_dot = {**int4, "BLOCK_M": "constexpr", "MAGIC": "constexpr", "MAGIC_VALUE": "constexpr"}
    del int4_dot["NUM_STAGES"]
    for block_m, block_n, block_k in ((16, 64, 256), (64, 64, 128)):
        cases.append((f"int4 g128 dot, {block_m} rows, n{block_n} k{block_k}",
                      quant_gemv._int4_dot_kernel, int4_dot,
                      dict(Bias=None, HAS_BIAS=False, GROUP=128, GROUPS_PER_TILE=block_k // 128,
                           BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, MAGIC=0x4300,
                           MAGIC_VALUE=128.0),
                      ["X", "QW", "Scales", "Zeros", "Out", "K", "stride_xm", "k_per_split"], 4,
                      block_n * block_k // 2))
    for block_n, warps in ((64, 4), (128, 8)):
        cases.append((f"int4 g128 swap, 64 rows, n{block_n} k128 (a warp per 16 weight rows)",
                      quant_gemv._int4_swap_kernel, {**int4_dot, "SLICES": "constexpr"},
                      dict(Bias=None, HAS_BIAS=False, GROUP=128, GROUPS_PER_TILE=1, BLOCK_M=64,
                           BLOCK_N=block_n, BLOCK_K=128, MAGIC=0x4300, MAGIC_VALUE=128.0,
                           SLICES=warps),
                      ["X", "QW", "Scales", "Zeros", "Out", "K", "stride_xm", "k_per_split"],
                      warps, block_n * 128 // 2))
    for block_n, block_k in ((16, 512), (8, 1024)):
        cases.append((f"fp8 one row, n{block_n} k{block_k}", fp8_row_gemv._fp8_row_kernel, fp8,
                      dict(Bias=None, Final=None, Counters=None, HAS_BIAS=False, GATED=False,
                           BLOCK_N=block_n, BLOCK_K=block_k,
                           X_BLOCK=fp8_row_gemv.row_scale_block(4096, 4), EVEN_K=True,
                           NUM_STAGES=1, TENSOR_CORES=False, FUSED_SUM=False, **no_amax),
                      ["X", "QW", "Scales", "Out", "K", "k_per_split"], 4, block_n * block_k))
    for block_n, block_k, warps, stages in ((128, 128, 4, 3), (64, 256, 4, 3)):
        for fused in (False, True):
            cases.append((f"fp8 one row, tensor cores, n{block_n} k{block_k}"
                          + (", split sums fused" if fused else ""),
                          fp8_row_gemv._fp8_row_kernel, fp8_fused if fused else fp8,
                          dict(Bias=None, HAS_BIAS=False, GATED=False, BLOCK_N=block_n,
                               BLOCK_K=block_k, X_BLOCK=fp8_row_gemv.row_scale_block(4096, warps),
                               EVEN_K=True, NUM_STAGES=stages,
                               TENSOR_CORES=True, FUSED_SUM=fused, **no_amax,
                               **({} if fused else dict(Final=None, Counters=None))),
                          ["X", "QW", "Scales", "Out", "K", "k_per_split"]
                          + (["Final", "Counters"] if fused else []), warps,
                          block_n * block_k, stages))
    return cases


def _decode_attention_cases(shapes=((64, 4, 2),)):
    """The paged decode attention at the Llama-3-8B shape (4 query heads per kv head, 128 dims,
    16-token blocks), over bf16, fp8 and int8 caches, at each launch shape (keys per tile,
    warps, stages; the default: 64-key tiles on 4 warps, 2 stages): bytes are the K and V tiles
    (and the 8-bit caches' scales) one loop pass reads. The fp8 cache twice: with its products
    in fp16 (what runs) and in bf16 (what ran before, bound by F2F conversions)."""
    from runtime_service.model.kernels import paged_decode

    strides = ["stride_qt", "stride_qh", "stride_kb", "stride_ks", "stride_kh", "stride_vb",
               "stride_vs", "stride_vh", "stride_bt", "stride_pt", "stride_ph", "stride_ps",
               "stride_lt", "stride_lh", "stride_ot", "stride_oh"]
    cases = []
    for name, cache, scale, scale_bytes, fp16 in (
            ("bf16", "*bf16", "*bf16", 0, False), ("fp8", "*fp8e4nv", "*fp32", 4, True),
            ("fp8 (bf16 products)", "*fp8e4nv", "*fp32", 4, False),
            ("int8", "*i8", "*fp32", 4, False)):
        signature = {"Q": "*bf16", "K_cache": cache, "V_cache": cache, "PartialOut": "*fp32",
                     "PartialLse": "*fp32", "Out": "*bf16", "arrival_counts": "*i32",
                     "block_tables": "*i32", "seq_lens": "*i32", "scale_log2": "fp32",
                     "fused_combine": "i32", **dict.fromkeys(strides, "i32"),
                     "K_scale": scale, "V_scale": scale, "stride_sb": "i32", "stride_ss": "i32",
                     # the step's own k and v (unused: ROTARY off, the loop is the same)
                     "K_new": "*bf16", "V_new": "*bf16", "positions": "*i64", "slots": "*i64",
                     "Cos": "*bf16", "Sin": "*bf16",
                     **dict.fromkeys(["stride_nkt", "stride_nkh", "stride_nvt", "stride_nvh",
                                      "stride_c", "max_position"], "i32"),
                     **dict.fromkeys(["GROUP", "BLOCK_G", "MERGE_G", "BLOCK_SIZE", "HEAD_DIM",
                                      "BLOCK_D", "BLOCK_N", "NUM_SPLITS", "MIN_SPLIT_KEYS",
                                      "PRECISION", "KV_QUANT", "FP8_AS_FP16", "ROTARY", "QMAX",
                                      "IS_INT8"], "constexpr")}
        aligned = ["Q", "K_cache", "V_cache", "PartialOut", "PartialLse", "Out",
                   "arrival_counts", "block_tables", "seq_lens", "K_scale", "V_scale",
                   *strides, "stride_sb"]
        for block_n, warps, stages in shapes:
            constexprs = dict(GROUP=4, BLOCK_G=16, MERGE_G=4, BLOCK_SIZE=16, HEAD_DIM=128,
                              BLOCK_D=128, BLOCK_N=block_n, NUM_SPLITS=1, MIN_SPLIT_KEYS=0,
                              PRECISION=None, KV_QUANT=name != "bf16", FP8_AS_FP16=fp16,
                              ROTARY=False, QMAX=448.0, IS_INT8=name == "int8")
            loop_bytes = block_n * (128 * 2 * (2 if name == "bf16" else 1) + 2 * scale_bytes)
            label = "n64" if (block_n, warps, stages) == (64, 4, 2) \
                else f"n{block_n} w{warps} s{stages}"
            cases.append((f"decode attention, {name} KV, {label}",
                          paged_decode._decode_kernel, signature, constexprs, aligned, warps,
                          loop_bytes, stages))
    return cases


# Launch shapes of bench_attention's 8-bit sweep (keys per tile, warps, stages).
ATTENTION_SHAPES = tuple((n, w, s) for n in (32, 64, 128) for w in (1, 2, 4) for s in (1, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--attention-shapes", action="store_true",
                        help="only the decode attention, at every launch shape of "
                             "bench_attention's 8-bit sweep (n32-128 x 1-4 warps x 1-2 stages)")
    args = parser.parse_args(argv)
    rows = []
    if args.attention_shapes:
        cases = _decode_attention_cases(ATTENTION_SHAPES)
    else:
        cases = [case if len(case) == 8 else (*case, 1) for case in _gemv_cases()] \
            + _decode_attention_cases()
    for name, kernel, signature, constexprs, aligned, warps, loop_bytes, stages in cases:
        loop = hot_loop(compile_sm90(kernel, signature, constexprs, aligned, warps, stages))
        per_lane = loop_bytes / (32 * warps)
        rows.append({"kernel": name, "loop_instructions": len(loop),
                     "weight_bytes_per_lane": per_lane,   # KV bytes for the attention rows
                     "instructions_per_byte": round(len(loop) / per_lane, 2),
                     "top_opcodes": Counter(loop).most_common(8)})
    width = max(len(r["kernel"]) for r in rows)
    print(f"{'kernel':{width}}  loop  bytes/lane  instr/byte  top opcodes")
    for r in rows:
        mix = " ".join(f"{op}:{n}" for op, n in r["top_opcodes"])
        print(f"{r['kernel']:{width}}  {r['loop_instructions']:4d}  {r['weight_bytes_per_lane']:10.0f}"
              f"  {r['instructions_per_byte']:10.2f}  {mix}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
