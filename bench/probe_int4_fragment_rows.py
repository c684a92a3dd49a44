"""A design probe for issue 13's W4A16 marks: int4 weights stored in mma.sync's register order,
multiplied by 1-64 rows of x on the tensor cores, against Kiln's tuned int4 kernels, per
Llama-3-8B projection. Not wired into the engine: run 30 refuted it (bench/NOTES.md, session of
2026-12-06 (sixth)); this is what was measured.

Why it was tried: the int4 dot and swap kernels (quant_gemv.py) spend 7.5 instructions a weight
byte moving the dequantized tile into the MMA's operand layout, and at 64 rows run no faster than
bf16 (run 28c). Here each lane's 16 bytes of a 16-row, 64-column slot are already its A
fragments of four `mma.sync.m16n8k16` (PTX ISA 9.7.14.5.8): three shifts and four LOP3s a word
turn nibbles into MAGIC + q (exact), two packed FMAs take off MAGIC + zero (exact) and apply the
scale (the one rounding, as dequantize-then-matmul), and x's rows are the MMA's 8 columns
(offline SASS: 6.4 instructions a weight byte at one row, 9.5 at 64 rows, no shared memory).

Why it lost: a warp owns 16 weight rows and reads every row of x for them, so x's traffic from L2
is M / 4 times the weight's (16x at 64 rows); Triton gives inline-assembly MMAs no shared memory
to stage x once per program. Times grew with that ratio (about 10 us per weight-sized pass of x
on gate_up, H100), and an L2 prefetch of the weights 4-8 slots ahead bought nothing.

The K order inside a slot is chosen so that x needs no reordering: MMA m's k-positions 2t + d and
2t + 8 + d (the ones lane t holds, in A and B alike) stand for the slot's columns 16t + 4m + d
and 16t + 4m + 2 + d. So lane t's B fragments are x's 16 contiguous columns 16t..16t + 15, and
its A fragments lie in one group for group sizes 32, 64 and 128.

Layout (`pack_fragments`): int32 words [ceil(N/16), ceil(K/64), 32 lanes, 4]; word m of lane
(g, t) holds MMA m's four A registers r as nibbles r (first value) and r + 4 (second), register
r being row g + 8 (r % 2), columns 16t + 4m + 2 (r // 2) + {0, 1}. Padding is zero codes.

    python3 bench/probe_int4_fragment_rows.py --json int4_fragment_rows.json     # GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}
GROUP = 128
MAX_REL_ERR = 4e-3                      # tests/gpu's int4 bound


SLOT = 64               # columns of a slot: four k16 MMAs
ROWS = 16               # rows of a row block: the MMA's M


def _register_sources():
    """(row in block, column in slot) of each nibble: [4 words m][8 nibbles i][32 lanes]."""
    lane = torch.arange(32)
    g, t = lane // 4, lane % 4
    rows, cols = torch.empty(4, 8, 32, dtype=torch.long), torch.empty(4, 8, 32, dtype=torch.long)
    for m in range(4):
        for i in range(8):
            r, second = i % 4, i // 4
            rows[m, i] = g + 8 * (r % 2)
            cols[m, i] = 16 * t + 4 * m + 2 * (r // 2) + second
    return rows, cols


def pack_fragments(codes: torch.Tensor) -> torch.Tensor:
    """codes [N, K] (0-15) -> int32 [ceil(N/16), ceil(K/64), 32, 4] in the MMAs' order."""
    n, k = codes.shape
    n_pad, k_pad = -(-n // ROWS) * ROWS, -(-k // SLOT) * SLOT
    padded = torch.zeros(n_pad, k_pad, dtype=torch.uint8, device=codes.device)
    padded[:n, :k] = codes
    slots = padded.view(n_pad // ROWS, ROWS, k_pad // SLOT, SLOT).permute(0, 2, 1, 3)
    rows, cols = (index.to(codes.device) for index in _register_sources())
    nibbles = slots[:, :, rows, cols]                         # [rb, slot, m, i, lane]
    pairs = nibbles[:, :, :, 0::2] | (nibbles[:, :, :, 1::2] << 4)   # bytes [rb, slot, m, 4, lane]
    words = pairs.permute(0, 1, 4, 2, 3).contiguous()         # [rb, slot, lane, m, byte]
    return words.view(torch.int32).reshape(n_pad // ROWS, k_pad // SLOT, 32, 4)


def unpack_fragments(words: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The inverse of `pack_fragments`: codes [N, K]."""
    rb, slots = words.shape[:2]
    pairs = words.contiguous().view(torch.uint8).view(rb, slots, 32, 4, 4)
    pairs = pairs.permute(0, 1, 3, 4, 2)                      # [rb, slot, m, byte, lane]
    nibbles = torch.empty(rb, slots, 4, 8, 32, dtype=torch.uint8, device=words.device)
    nibbles[:, :, :, 0::2] = pairs & 0xF
    nibbles[:, :, :, 1::2] = pairs >> 4
    rows, cols = (index.to(words.device) for index in _register_sources())
    blocks = torch.empty(rb, slots, ROWS, SLOT, dtype=torch.uint8, device=words.device)
    blocks[:, :, rows, cols] = nibbles
    return blocks.permute(0, 2, 1, 3).reshape(rb * ROWS, slots * SLOT)[:n, :k].contiguous()


def _dequantize_ptx() -> str:
    """$16-$19: the lane's words (word m: MMA m); $20-$23: -(128 + zero) and $24-$27: the scale,
    each a bf16 pair, of register r's row. Out: $4m + r, register r of MMA m."""
    lines = ["{", ".reg .b32 q, one, nzero;", "mov.b32 one, 0x3f803f80;",
             "mov.b32 nzero, 0x80008000;"]
    for m in range(4):
        for r in range(4):
            source = f"${16 + m}"
            if r:
                lines.append(f"shr.u32 q, {source}, {4 * r};")
                source = "q"
            lines += [f"lop3.b32 q, {source}, 0x000F000F, 0x43004300, 0xea;",
                      f"fma.rn.bf16x2 q, q, one, ${20 + r};",
                      f"fma.rn.bf16x2 ${4 * m + r}, q, ${24 + r}, nzero;"]
    return "\n".join(lines + ["}"])


def _mma_ptx() -> str:
    """$4-$19: the A registers of MMAs 0-3; $20-$23 and $24-$27: the lane's eight words of x
    (MMA m takes words 2m and 2m + 1); $28-$31: the accumulator in, $0-$3 out."""
    lines = ["{", ".reg .f32 d<4>;"]
    for m in range(4):
        a = ", ".join(f"${4 + 4 * m + r}" for r in range(4))
        c = "$28, $29, $30, $31" if m == 0 else "d0, d1, d2, d3"
        lines.append(f"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{d0, d1, d2, d3}}, "
                     f"{{{a}}}, {{${20 + 2 * m}, ${21 + 2 * m}}}, {{{c}}};")
    return "\n".join(lines + [f"mov.b32 ${r}, d{r};" for r in range(4)] + ["}"])


# Asks L2 for the 128-byte line at the first of four elements' addresses ($4) where $8 is set
# (a warp's slot is four lines: lanes 0, 8, 16 and 24 ask). `prefetch` takes no register.
_PREFETCH_L2 = """{
.reg .pred p;
setp.ne.b32 p, $8, 0;
@p prefetch.global.L2 [$4];
mov.b32 $0, 0;
mov.b32 $1, 0;
mov.b32 $2, 0;
mov.b32 $3, 0;
}"""


@functools.cache
def _kernel():
    """The Triton kernel, built on first use (the layout above needs no Triton)."""
    import triton
    import triton.language as tl

    dequantize, mma, prefetch = (tl.constexpr(_dequantize_ptx()), tl.constexpr(_mma_ptx()),
                                 tl.constexpr(_PREFETCH_L2))

    @triton.jit
    def int4_fragment_kernel(XW, Words, Scales, Zeros, Out, M, N, K, stride_xw,
                             slots_per_split, GROUP: tl.constexpr, NT: tl.constexpr,
                             WARPS: tl.constexpr, EVEN_K: tl.constexpr, AHEAD: tl.constexpr):
        """A program: WARPS row blocks x one K split. Element e of the [E] tiles is warp e // 128,
        lane (e // 4) % 32, register e % 4 (Triton's blocked layout of a 1-D int32 tile, four a
        thread); the [NT, E] tiles add x's row tiles in registers. Row blocks and x rows past
        the ends read the last ones (their results are not stored)."""
        E: tl.constexpr = 128 * WARPS
        split = tl.program_id(1)
        offs = tl.arange(0, E)
        reg = offs % 4
        lane = (offs // 4) % 32
        g = lane // 4
        t = lane % 4
        rb = tl.program_id(0) * WARPS + offs // 128
        num_slots = tl.cdiv(K, 64)
        groups = K // GROUP
        a_row = tl.minimum(rb * 16 + g + 8 * (reg % 2), N - 1)      # A register reg's row
        tile = tl.arange(0, NT)[:, None]
        x_rows = XW + tl.minimum(tile * 8 + g[None, :], M - 1).to(tl.int64) * stride_xw
        words = (Words + tl.minimum(rb, tl.cdiv(N, 16) - 1).to(tl.int64) * (num_slots * 128)
                 + offs % 128)
        acc = tl.zeros([NT, E], tl.float32)
        first = split * slots_per_split
        last = tl.minimum(first + slots_per_split, num_slots)
        asks = ((lane % 8 == 0) & (reg == 0)).to(tl.int32)
        for slot in range(first, tl.minimum(first + AHEAD, last)):
            tl.inline_asm_elementwise(prefetch, "=r,=r,=r,=r,l,l,l,l,r,r,r,r",
                                      [words + slot * 128, asks], dtype=tl.int32,
                                      is_pure=False, pack=4)
        for slot in range(first, last):
            tl.inline_asm_elementwise(prefetch, "=r,=r,=r,=r,l,l,l,l,r,r,r,r",
                                      [words + tl.minimum(slot + AHEAD, num_slots - 1) * 128,
                                       asks], dtype=tl.int32, is_pure=False, pack=4)
            a = tl.load(words + slot * 128)
            group = tl.minimum((slot * 64 + 16 * t) // GROUP, groups - 1)
            zero = tl.load(Zeros + a_row * groups + group).to(tl.int32)
            scale = tl.load(Scales + a_row * groups + group).to(tl.int16, bitcast=True)
            scale = scale.to(tl.int32) & 0xFFFF
            neg_zero = 0xC300 + zero                                # -(128 + zero), exact
            u0, u1, u2, u3 = tl.inline_asm_elementwise(
                dequantize, "=r," * 16 + "r," * 11 + "r",
                [a, neg_zero | (neg_zero << 16), scale | (scale << 16)],
                dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=4)
            word = slot * 32 + 8 * t + reg                       # x's columns 2 word, 2 word + 1
            if EVEN_K:
                xa = tl.load(x_rows + word[None, :])
                xb = tl.load(x_rows + word[None, :] + 4)
            else:
                xa = tl.load(x_rows + word[None, :], mask=(word < K // 2)[None, :], other=0)
                xb = tl.load(x_rows + word[None, :] + 4, mask=(word < K // 2)[None, :], other=0)
            acc = tl.inline_asm_elementwise(mma, "=f," * 4 + "r," * 24 + "f," * 3 + "f",
                                            [u0, u1, u2, u3, xa, xb, acc], dtype=tl.float32,
                                            is_pure=True, pack=4)
        # D register reg of lane (g, t): weight row g + 8 (reg // 2), x row 2t + reg % 2
        out_col = rb * 16 + g + 8 * (reg // 2)
        out_row = tile * 8 + (2 * t + reg % 2)[None, :]
        tl.store(Out + (split * M + out_row) * N + out_col[None, :],
                 acc.to(Out.dtype.element_ty), mask=(out_row < M) & (out_col < N)[None, :])

    return triton, int4_fragment_kernel


def launch(x, words, scales, zeros, n: int, warps: int, split: int, ahead: int):
    """x [M <= 64, K] bf16 times the packed weight (contiguous rows): `warps` row blocks a
    program, `split` K splits (float32 partials, summed by torch), weights asked of L2 `ahead`
    slots early."""
    triton, kernel = _kernel()
    rows, k = x.shape
    slots = triton.cdiv(k, 64)
    target = torch.empty((split, rows, n), dtype=torch.float32 if split > 1 else x.dtype,
                         device=x.device)
    kernel[(triton.cdiv(triton.cdiv(n, 16), warps), split)](
        x.view(torch.int32), words, scales, zeros, target, rows, n, k, x.stride(0) // 2,
        triton.cdiv(slots, split), GROUP=GROUP, NT=triton.next_power_of_2(triton.cdiv(rows, 8)),
        WARPS=warps, EVEN_K=k % 64 == 0, AHEAD=ahead, num_warps=warps, num_stages=1)
    return target[0] if split == 1 else target.sum(0).to(x.dtype)


def launches(rows: int, n: int, k: int, sm_count: int):
    """(warps, split, ahead): 2-8 warps, unsplit and split to fill (gemv's `split_to_fill`, a
    64-column slot as its K block) and twice that."""
    import triton

    from runtime_service.model.kernels.gemv import split_to_fill

    slots = triton.cdiv(k, 64)
    for warps in (2, 4, 8):
        split = split_to_fill(triton.cdiv(triton.cdiv(n, 16), warps), k, 64, sm_count)
        for split_k in sorted({1, split, min(2 * split, max(1, slots // 4))}):
            for ahead in (1, 4, 8):
                yield warps, split_k, ahead


def time_shape(rows: int, n: int, k: int) -> dict:
    from runtime_service.model.kernels import quant_linear as ql
    from runtime_service.model.kernels.tuning_clock import (copies_beyond_l2,
                                                            graph_time_per_call_us, sm_count)
    from runtime_service.model.layers.quantize import pack_int4

    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")
    scales = (torch.rand(n, k // GROUP, device="cuda") * 0.02 + 0.002).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (n, k // GROUP), dtype=torch.uint8, device="cuda")
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    contract = pack_int4(codes)
    reference = ql.int4_linear_reference(x, contract, scales, zeros, GROUP).float()
    words = pack_fragments(codes)
    ours = [(words, scales, zeros)] + [(words.clone(), scales, zeros)
                                       for _ in range(copies_beyond_l2(words) - 1)]
    kiln_weights = ql.pack_for_device("int4", {"qweight": contract, "scales": scales,
                                               "zeros": zeros})
    theirs = [tuple(kiln_weights.values())]
    theirs += [tuple(t.clone() for t in theirs[0]) for _ in range(len(ours) - 1)]
    timed = {"kiln": graph_time_per_call_us(
        lambda x_, w: ql.int4_linear(x_, *w, GROUP), x, theirs)}
    for warps, split, ahead in launches(rows, n, k, sm_count(0)):
        def call(x_, w, warps=warps, split=split, ahead=ahead):
            return launch(x_, *w, n, warps, split, ahead)
        err = ((call(x, ours[0]).float() - reference).norm() / reference.norm()).item()
        if not err <= MAX_REL_ERR:
            raise AssertionError(f"w{warps} split{split}: relative error {err:.2e}")
        timed[f"w{warps} split{split} ahead{ahead}"] = graph_time_per_call_us(call, x, ours)
    return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,16,64")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("the timings need a CUDA GPU (sm_80 or newer)", file=sys.stderr)
        return 2
    report = {"bench": "probe_int4_fragment_rows", "gpu": torch.cuda.get_device_name(0),
              "cases": {}}
    for rows in (int(r) for r in args.rows.split(",")):
        for name, (n, k) in SHAPES.items():
            timed = time_shape(rows, n, k)
            best = min((us, c) for c, us in timed.items() if c != "kiln")
            print(f"rows {rows:2d} {name:8s}: Kiln {timed['kiln']:6.1f} us, fragments "
                  f"{best[0]:6.1f} ({best[1]})", flush=True)
            report["cases"][f"{rows}/{name}"] = timed
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
