"""A design probe for issue 13's batch-1 marks: one-row GEMVs over weights stored in the tensor
cores' register-fragment order, against Kiln's tuned one-row kernels and the bandwidth floor, per
Llama-3-8B projection. Not wired into the engine: run 30a refuted it (bench/NOTES.md, session of
2026-12-06 (sixth)). On an H100 the best launch of each form came within 1-10% of Kiln's tuned
one-row kernels and no nearer the floor (fp8 2.99 against Kiln's 2.82 ms of linears a token,
int4 2.10 against 2.18): the one-row kernels are not bound by their instruction count but by each
launch's few microseconds of ramp and tail, which a leaner loop does not shorten.

Why: at batch 1 the linears must stream near the copy bandwidth (FP8's floor is 1.9 ms on an
H200 against the 2.4 ms mark; W4A16's 1.1 against 1.6), and Kiln's one-row kernels issue 4.3
(fp8) and 8.55 (int4) instructions a weight byte where the bf16 GEMV's 2.1 streams 4 TB/s. Here
each lane loads its own 16 bytes of weight tiles, already in the order `mma.sync` wants them in
its registers, so nothing is staged through shared memory or shuffled:

- fp8 "e4m3": `mma.sync.m16n8k32.e4m3` on the codes as stored. On sm_90 ptxas widens both
  operands to f16 itself (offline SASS: F2FP, FADD and two HMMA a tile; 1.6-2.0 instructions a
  byte).
- fp8 "f16": the weight codes widened in registers (`cvt.rn.f16x2.e4m3x2`, exact) into two
  `mma.sync.m16n8k16.f16`, x's e4m3 codes handed over as f16 (exact), in the order each lane
  reads as one 16-byte load (offline SASS: 1.1-1.6 instructions a byte).
- int4 (W4A16, group 128): nibbles or-ed into bf16's mantissa (0x4300 | q = 128 + q, exact)
  into four `mma.sync.m16n8k16.bf16` a 64-column slot; the slot's 128 + zero point times the
  slot's sum of x is taken off after, then its scale applied, in float32.

x is repeated over the MMA's 8 columns, so every column of the result is the row's output.
Products are exact and summed in float32 throughout.

    python3 bench/probe_fragment_gemv.py --check       # CPU: the packings against mma's layouts
    python3 bench/probe_fragment_gemv.py --json fragments.json       # GPU timings
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}
LAUNCHES = ((4, 1), (4, 2), (4, 4), (8, 2), (8, 4))      # (warps, K tiles a warp per iteration)
MAX_REL_ERR = {"fp8": 5e-3, "int4": 4e-3}                # tests/gpu's bounds
GROUP = 128

# The A-fragment registers of each MMA: (rows from groupID, first column) per PTX ISA 9.7.14.5:
# m16n8k32 (8-bit): four registers of 4 bytes, columns tig * 4 + {0..3}, then + 16;
# m16n8k16 (f16): four registers of 2 values, columns tig * 2 + {0, 1}, then + 8.
_K32_REGISTERS = ((0, 0), (8, 0), (0, 16), (8, 16))
_K16_REGISTERS = ((0, 0), (8, 0), (0, 8), (8, 8))


def _tiles(w_codes: torch.Tensor) -> torch.Tensor:
    n, k = w_codes.shape
    if n % 16 or k % 32:
        raise ValueError(f"the fragment layout takes 16-row, 32-column tiles; got {n} x {k}")
    return w_codes.view(n // 16, 16, k // 32, 32).permute(0, 2, 1, 3)     # [rb, kt, 16, 32]


def pack_k32(w_codes: torch.Tensor) -> torch.Tensor:
    """[N, K] bytes -> [N/16, K/32, 32 lanes, 16 bytes]: lane l's A fragment of
    mma.m16n8k32 for each 16 x 32 tile (groupID l // 4, tig l % 4)."""
    tiles = _tiles(w_codes)
    lane = torch.arange(32)
    group, tig = lane // 4, lane % 4
    parts = [tiles[:, :, (group + row)[:, None], col + tig[:, None] * 4 + torch.arange(4)]
             for row, col in _K32_REGISTERS]
    return torch.cat(parts, dim=-1).contiguous()


def pack_k16(w_codes: torch.Tensor) -> torch.Tensor:
    """[N, K] bytes -> [N/16, K/32, 32 lanes, 16 bytes]: lane l's A fragments of the two
    mma.m16n8k16 that cover a 16 x 32 tile (columns 0-15, then 16-31), two codes a register."""
    tiles = _tiles(w_codes)
    lane = torch.arange(32)
    group, tig = lane // 4, lane % 4
    parts = [tiles[:, :, (group + row)[:, None], half * 16 + col + tig[:, None] * 2
                   + torch.arange(2)]
             for half in (0, 1) for row, col in _K16_REGISTERS]
    return torch.cat(parts, dim=-1).contiguous()


def x_words_k16(x: torch.Tensor) -> torch.Tensor:
    """x [K] -> x in the order lane l of the f16 kernel reads it as one 16-byte load: per 32-column
    tile, for tig 0-3, the pairs at columns tig * 2 + {0, 8, 16, 24} (the B fragments of the two
    MMAs: rows tig * 2 + {0, 1}, then + 8)."""
    pairs = x.reshape(-1, 4, 4, 2)              # [kt, j (8-column step), tig, pair]
    return pairs.permute(0, 2, 1, 3).reshape(-1).contiguous()


def emulate(packed: torch.Tensor, x_codes: torch.Tensor, k16: bool) -> torch.Tensor:
    """The row's outputs as the MMAs compute them from `packed` (float32, on the CPU): each lane's
    registers placed where PTX's fragment layout puts them, x as the B column."""
    lane = torch.arange(32)
    group, tig = lane // 4, lane % 4
    x_tiles = x_codes.float().view(-1, 32)
    out = torch.zeros(packed.shape[0], 16)
    width = 2 if k16 else 4
    registers = ([(h, r, c) for h in (0, 1) for r, c in _K16_REGISTERS] if k16
                 else [(0, r, c) for r, c in _K32_REGISTERS])
    for rb in range(packed.shape[0]):
        for kt in range(packed.shape[1]):
            a = torch.zeros(16, 32)
            fragment = packed[rb, kt].float()
            for index, (half, row, col) in enumerate(registers):
                cols = half * 16 + col + tig[:, None] * width + torch.arange(width)
                a[(group + row)[:, None], cols] = fragment[:, index * width:(index + 1) * width]
            out[rb] += a @ x_tiles[kt]
    return out.reshape(-1)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0-15 -> [N/16, K/64, 32 lanes, 16 bytes]: per 64-column slot, the words
    of its two 32-column tiles' two k16 halves. Word nibble i (bits 4i-4i+3) is the first value
    of A register i % 4 and nibble i + 4 its second: `(word >> 4i) & 0x000F000F` puts both in
    one bf16x2 register."""
    n, k = codes.shape
    if n % 16 or k % 64:
        raise ValueError(f"the int4 fragment layout takes 16-row, 64-column slots; got {n} x {k}")
    slots = codes.view(n // 16, 16, k // 64, 64).permute(0, 2, 1, 3)    # [rb, slot, 16, 64]
    lane = torch.arange(32)
    group, tig = lane // 4, lane % 4
    words = []
    for tile in (0, 1):
        for half in (0, 1):
            first = tile * 32 + half * 16 + tig * 2
            nibbles = ([slots[:, :, group + row, first + col] for row, col in _K16_REGISTERS]
                       + [slots[:, :, group + row, first + col + 1]
                          for row, col in _K16_REGISTERS])
            words.append(torch.stack([nibbles[2 * b] | (nibbles[2 * b + 1] << 4)
                                      for b in range(4)], dim=-1))
    return torch.cat(words, dim=-1).to(torch.uint8).contiguous()


def emulate_int4(packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The row's sum of q * x as the MMAs compute it from `packed` (float32, on the CPU)."""
    lane = torch.arange(32)
    group, tig = lane // 4, lane % 4
    x_slots = x.float().view(-1, 64)
    out = torch.zeros(packed.shape[0], 16)
    for rb in range(packed.shape[0]):
        for slot in range(packed.shape[1]):
            a = torch.zeros(16, 64)
            for index, (tile, half) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                word = packed[rb, slot, :, index * 4:(index + 1) * 4].long()     # [32, 4]
                nibbles = [(word[:, i // 2] >> (4 * (i % 2))) & 0xF for i in range(8)]
                for i, (row, col) in enumerate(_K16_REGISTERS):
                    cols = tile * 32 + half * 16 + col + tig * 2
                    a[group + row, cols] = nibbles[i].float()
                    a[group + row, cols + 1] = nibbles[i + 4].float()
            out[rb] += a @ x_slots[slot]
    return out.reshape(-1)


def check_packing() -> None:
    """Every packing reproduces W @ x through the fragment layouts (fp8's two, int4's), and x's
    16-bit order puts each lane's B registers (words tig, 4 + tig, 8 + tig, 12 + tig of a
    tile) side by side."""
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 7, (32, 96), generator=g, dtype=torch.uint8)
    x = torch.randint(0, 7, (96,), generator=g, dtype=torch.uint8)
    want = w.float() @ x.float()
    for k16, pack in ((False, pack_k32), (True, pack_k16)):
        got = emulate(pack(w), x, k16)
        if not torch.equal(got, want):
            raise AssertionError(f"{pack.__name__}: {got} != {want}")
    codes = torch.randint(0, 16, (32, 128), generator=g, dtype=torch.uint8)
    x = torch.randint(-3, 4, (128,), generator=g).float()
    got = emulate_int4(pack_int4(codes), x)
    if not torch.equal(got, codes.float() @ x):
        raise AssertionError(f"pack_int4: {got} != {codes.float() @ x}")
    words = torch.arange(96 * 2).view(-1, 2)          # f16 pairs as 32-bit words
    permuted = x_words_k16(words.reshape(-1)).view(-1, 2)
    for kt in range(3):
        for t in range(4):
            lane_words = permuted[kt * 16 + t * 4:kt * 16 + t * 4 + 4, 0] // 2
            expected = kt * 16 + t + 4 * torch.arange(4)
            if not torch.equal(lane_words, expected):
                raise AssertionError(f"x order: tile {kt} tig {t}: {lane_words} != {expected}")


def _kernels():
    import triton
    import triton.language as tl

    mma_k32 = tl.constexpr(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {$0, $1, $2, $3}, "
        "{$4, $5, $6, $7}, {$8, $9}, {$12, $13, $14, $15};")
    mma_k16 = tl.constexpr("""{
.reg .b16 l0, h0, l1, h1, l2, h2, l3, h3;
.reg .b32 a0, a1, a2, a3, a4, a5, a6, a7;
mov.b32 {l0, h0}, $4;
mov.b32 {l1, h1}, $5;
mov.b32 {l2, h2}, $6;
mov.b32 {l3, h3}, $7;
cvt.rn.f16x2.e4m3x2 a0, l0;
cvt.rn.f16x2.e4m3x2 a1, h0;
cvt.rn.f16x2.e4m3x2 a2, l1;
cvt.rn.f16x2.e4m3x2 a3, h1;
cvt.rn.f16x2.e4m3x2 a4, l2;
cvt.rn.f16x2.e4m3x2 a5, h2;
cvt.rn.f16x2.e4m3x2 a6, l3;
cvt.rn.f16x2.e4m3x2 a7, h3;
mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, {a0, a1, a2, a3}, {$8, $9}, {$12, $13, $14, $15};
mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, {a4, a5, a6, a7}, {$10, $11}, {$0, $1, $2, $3};
}""")

    @triton.jit
    def row_outputs(acc, TILES: tl.constexpr):
        """The 16 rows' sums from a tile of D fragments: each lane holds rows groupID (registers
        0, 1) and groupID + 8 (2, 3), every column the same; lane tig 0's first of each."""
        sums = tl.sum(tl.reshape(acc, [TILES, 8, 4, 4]), axis=0)     # [group, tig, register]
        tig = tl.arange(0, 4)[None, :, None]
        register = tl.arange(0, 4)[None, None, :]
        low = tl.sum(tl.sum(tl.where((tig == 0) & (register == 0), sums, 0.0), 2), 1)
        high = tl.sum(tl.sum(tl.where((tig == 0) & (register == 2), sums, 0.0), 2), 1)
        return low, high

    @triton.jit
    def fragment_row_kernel(XW, x_scale, WP, WScales, Out, K, W: tl.constexpr,
                            U: tl.constexpr, K16: tl.constexpr):
        """Out[16 rows of program p] = (W x) * x_scale * WScales. A 1-D tile of 128 * W * U words:
        word e goes to warp (e // 128) % W, lane (e // 4) % 32, register e % 4, so each group of
        128 words is one warp's fragments of one 16 x 32 weight tile."""
        row_block = tl.program_id(0)
        k_tiles = K // 32
        E: tl.constexpr = 128 * W * U
        offs = tl.arange(0, E)
        tile = offs // 128
        lane = (offs // 4) % 32
        if K16:
            x_offs = offs % 16              # x_words_k16's order: a lane's four words together
            X_WORDS: tl.constexpr = 16
        else:                               # words tig and 4 + tig of the tile's 8
            x_offs = lane % 4 + 4 * ((offs % 4) == 1).to(tl.int32)
            X_WORDS: tl.constexpr = 8
        w_base = WP + row_block.to(tl.int64) * k_tiles * 128
        acc = tl.zeros([E], tl.float32)
        for start in range(0, k_tiles, W * U):
            kt = start + tile
            a = tl.load(w_base + kt * 128 + offs % 128)
            b = tl.load(XW + kt * X_WORDS + x_offs)
            acc = tl.inline_asm_elementwise(mma_k16 if K16 else mma_k32,
                                            "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f", [a, b, acc],
                                            dtype=tl.float32, is_pure=True, pack=4)
        low, high = row_outputs(acc, W * U)
        rows = row_block * 16 + tl.arange(0, 8)
        x_s = tl.load(x_scale)
        tl.store(Out + rows, (low * x_s * tl.load(WScales + rows)).to(Out.dtype.element_ty))
        tl.store(Out + rows + 8,
                 (high * x_s * tl.load(WScales + rows + 8)).to(Out.dtype.element_ty))

    unpack = "\n".join(
        f"lop3.b32 r{4 * w}, ${4 + w}, 0x000F000F, 0x43004300, 0xea;\n"
        + "".join(f"shr.u32 t, ${4 + w}, {4 * i};\n"
                  f"lop3.b32 r{4 * w + i}, t, 0x000F000F, 0x43004300, 0xea;\n"
                  for i in (1, 2, 3)) for w in range(4))
    mmas = "\n".join(
        f"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{$0, $1, $2, $3}}, "
        f"{{r{4 * m}, r{4 * m + 1}, r{4 * m + 2}, r{4 * m + 3}}}, {{${8 + 2 * m}, ${9 + 2 * m}}}, "
        + ("{z, z, z, z};" if m == 0 else "{$0, $1, $2, $3};") for m in range(4))
    mma_int4 = tl.constexpr("{\n.reg .b32 t, r<16>;\n.reg .f32 z;\nmov.f32 z, 0f00000000;\n"
                            + unpack + mmas + "\n}")

    @triton.jit
    def int4_fragment_row_kernel(XW, XSum, WP, Scales, Zeros, Out, K, GROUP: tl.constexpr,
                                 W: tl.constexpr, U: tl.constexpr):
        """Out[16 rows of program p] = W x for an int4 W (pack_int4's slots) and a bf16 x in
        x_words_k16's order: per 64-column slot four bf16 MMAs of 128 + q, less (128 + zero) times
        the slot's sum of x (XSum), times the group's scale, summed in float32."""
        row_block = tl.program_id(0)
        slots = K // 64
        groups = K // GROUP
        E: tl.constexpr = 128 * W * U
        offs = tl.arange(0, E)
        slot_local = offs // 128
        lane = (offs // 4) % 32
        x_lane = (lane % 4) * 4 + offs % 4
        rows = row_block * 16 + lane // 4 + 8 * ((offs % 4) >= 2).to(tl.int32)   # D's rows
        w_base = WP + row_block.to(tl.int64) * slots * 128
        acc = tl.zeros([E], tl.float32)
        for start in range(0, slots, W * U):
            slot = start + slot_local
            a = tl.load(w_base + slot * 128 + offs % 128)
            b0 = tl.load(XW + slot * 32 + x_lane)
            b1 = tl.load(XW + slot * 32 + 16 + x_lane)
            d = tl.inline_asm_elementwise(mma_int4, "=f,=f,=f,=f,r,r,r,r,r,r,r,r,r,r,r,r",
                                          [a, b0, b1], dtype=tl.float32, is_pure=True, pack=4)
            group = slot * 64 // GROUP
            zero = tl.load(Zeros + rows * groups + group).to(tl.float32)
            scale = tl.load(Scales + rows * groups + group).to(tl.float32)
            acc += (d - (128.0 + zero) * tl.load(XSum + slot)) * scale
        low, high = row_outputs(acc, W * U)
        out_rows = row_block * 16 + tl.arange(0, 8)
        tl.store(Out + out_rows, low.to(Out.dtype.element_ty))
        tl.store(Out + out_rows + 8, high.to(Out.dtype.element_ty))

    return {"fp8": fragment_row_kernel, "int4": int4_fragment_row_kernel}


def _time_candidates(calls: dict, reference: torch.Tensor, x, layouts: dict,
                     bound: float) -> dict:
    """{name: {rel_err, us}} of each call(x, layout) that computes within `bound` of the
    reference, timed on the tuner's clock over weight copies larger than L2."""
    from runtime_service.model.kernels.tuning_clock import graph_time_per_call_us

    timed = {}
    for name, (call, layout_key) in calls.items():
        copies = layouts[layout_key]
        try:
            err = ((call(x, copies[0]).float() - reference).norm() / reference.norm()).item()
            entry = {"rel_err": err}
            if err <= bound:
                entry["us"] = graph_time_per_call_us(call, x, copies)
        except Exception as exc:  # noqa: BLE001 - a launch that fails is reported
            entry = {"error": str(exc)[:300]}
        timed[name] = entry
    return timed


def _copies(first: tuple, count: int) -> list:
    return [first] + [tuple(t.clone() for t in first) for _ in range(count - 1)]


def time_fp8_shape(kernel, n: int, k: int) -> dict:
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels.tuning_clock import copies_beyond_l2

    w = (torch.randn(n, k, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = torch.rand(n, device="cuda") * 1e-3 + 1e-4
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    xq, xs = ql.quantize_rows_fp8_reference(x)
    xq, xs = xq.reshape(-1), xs.reshape(1).float().contiguous()
    reference = (xq.float() * xs) @ (w.float() * ws[:, None]).T
    x_in = {False: xq.view(torch.int32),
            True: x_words_k16(xq.to(torch.float16)).view(torch.int32)}
    count = copies_beyond_l2(w)
    layouts = {"kiln": _copies((w, ws), count)}
    for k16, pack in ((False, pack_k32), (True, pack_k16)):
        packed = pack(w.view(torch.uint8).cpu()).cuda().view(torch.int32).reshape(-1)
        layouts[k16] = _copies((packed, ws), count)
    out = torch.empty(n, device="cuda", dtype=torch.bfloat16)
    calls = {"kiln": (lambda x_, c: ql.fp8_linear(x_, c[0], c[1]).reshape(-1), "kiln")}
    for k16 in (False, True):
        for warps, unroll in LAUNCHES:
            if (k // 32) % (warps * unroll) == 0:
                def call(_x, c, warps=warps, unroll=unroll, k16=k16):
                    kernel[(n // 16,)](x_in[k16], xs, c[0], c[1], out, k, W=warps, U=unroll,
                                       K16=k16, num_warps=warps)
                    return out
                calls[f"{'f16' if k16 else 'e4m3'} w{warps} u{unroll}"] = (call, k16)
    return _time_candidates(calls, reference, x, layouts, MAX_REL_ERR["fp8"])


def time_int4_shape(kernel, n: int, k: int) -> dict:
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels.tuning_clock import copies_beyond_l2
    from runtime_service.model.layers.quantize import pack_int4 as pack_nibbles

    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    scales = (torch.rand(n, k // GROUP, device="cuda") * 0.02 + 0.002).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (n, k // GROUP), dtype=torch.uint8, device="cuda")
    contract = pack_nibbles(codes).cuda()
    device = ql.pack_for_device("int4", {"qweight": contract, "scales": scales, "zeros": zeros})
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    reference = ql.int4_linear_reference(x, contract, scales, zeros, GROUP).float().reshape(-1)
    x_words = x_words_k16(x.reshape(-1)).view(torch.int32)
    x_sums = x.float().view(-1, 64).sum(dim=1)
    count = copies_beyond_l2(device["qweight"])
    packed = pack_int4(codes).cuda().view(torch.int32).reshape(-1)
    layouts = {"kiln": _copies((device["qweight"], scales, zeros), count),
               "fragments": _copies((packed, scales, zeros), count)}
    out = torch.empty(n, device="cuda", dtype=torch.bfloat16)
    calls = {"kiln": (lambda x_, c: ql.int4_linear(x_, c[0], c[1], c[2], GROUP).reshape(-1),
                      "kiln")}
    for warps, unroll in LAUNCHES:
        if (k // 64) % (warps * unroll) == 0:
            def call(_x, c, warps=warps, unroll=unroll):
                kernel[(n // 16,)](x_words, x_sums, c[0], c[1], c[2], out, k, GROUP=GROUP,
                                   W=warps, U=unroll, num_warps=warps)
                return out
            calls[f"bf16 w{warps} u{unroll}"] = (call, "fragments")
    return _time_candidates(calls, reference, x, layouts, MAX_REL_ERR["int4"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only check the packings against the fragment layout (CPU)")
    parser.add_argument("--kinds", default="fp8,int4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if set(args.kinds.split(",")) - {"fp8", "int4"}:
        parser.error(f"--kinds takes fp8 and int4, got {args.kinds!r}")
    check_packing()
    print("packings match the MMA fragment layout")
    if args.check:
        return 0
    if not torch.cuda.is_available():
        print("the timings need a CUDA GPU (sm_90)", file=sys.stderr)
        return 2
    from bench_common import git_commit
    from decode_common import copy_bandwidth

    kernels = _kernels()
    bandwidth = copy_bandwidth("cuda")
    report = {"bench": "probe_fragment_gemv", "commit": git_commit(),
              "gpu": torch.cuda.get_device_name(0), "copy_bandwidth_bytes_per_s": bandwidth,
              "kinds": {}}
    timers = {"fp8": time_fp8_shape, "int4": time_int4_shape}
    for kind in args.kinds.split(","):
        totals = {"floor": 0.0, "kiln": 0.0, "fragments": 0.0}
        shapes = {}
        for name, (n, k) in SHAPES.items():
            timed = timers[kind](kernels[kind], n, k)
            nbytes = n * k if kind == "fp8" else n * k // 2 + 3 * n * (k // GROUP)
            floor_us = nbytes / bandwidth * 1e6
            ours = {c: e["us"] for c, e in timed.items() if "us" in e and c != "kiln"}
            best = min(ours.items(), key=lambda item: item[1]) if ours else ("none", math.nan)
            kiln_us = timed["kiln"].get("us", math.nan)
            shapes[name] = {"floor_us": floor_us, "timed": timed, "best": best[0]}
            for key, us in (("floor", floor_us), ("kiln", kiln_us), ("fragments", best[1])):
                totals[key] += 32 * us / 1e3
            print(f"{kind} {name}: floor {floor_us:.1f} us, Kiln {kiln_us:.1f}, fragments "
                  f"{best[1]:.1f} ({best[0]}); " + ", ".join(
                      f"{c} {e.get('us', math.nan):.1f} (err {e.get('rel_err', math.nan):.1e})"
                      for c, e in timed.items() if c != "kiln"), flush=True)
        report["kinds"][kind] = {"shapes": shapes, "per_token_ms": totals}
        print(f"{kind}: ms of linears a token (32 layers): floor {totals['floor']:.3f}, Kiln "
              f"{totals['kiln']:.3f}, fragments {totals['fragments']:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
