"""Triton kernels behind quant_linear.py: dequantizing GEMVs for int4 / int8 / fp8 weights.

Decode streams the weight once per step, so a quantized linear is as fast as its bytes: int4 is a
quarter of bf16's. The kernels follow gemv.py's `_dot_kernel` (x rows padded to a tensor-core
tile, split-K with float32 partials summed by gemv's `_split_sum_kernel`, tuned per shape on
first use inside CUDA graphs with gemv's clock) and change only what the weight costs to unpack:

- int4: the kernels read `pack_for_device`'s layout, where byte j of each group holds the
  group's columns j and G/2 + j, so a group's low and high nibbles each meet a contiguous half
  of x. Nibbles are unpacked without int-to-float conversions (a quarter-rate instruction): q
  or-ed into the mantissa of a power of two is that power plus q exactly. One row
  (`_int4_fma_kernel`, CUDA cores, the bf16 GEMV's single-row shape) unpacks four bytes per
  inline-PTX call and computes in float32; more rows (`_int4_dot_kernel`) dequantize in x's
  16-bit type and meet x in tensor-core dots. Every int4 kernel can sum its K splits in the
  same launch (FUSED_SUM, `_sum_splits_when_last`): a tuner's choice, 1.2% off a one-row
  W4A16 step (bench/NOTES.md, run 32c). Unlike the fp8 and bf16 GEMVs, the int4 ones do not
  form SwiGLU's activation as they read x: every program recomputing silu for its slice of x
  cost those issue-bound loops more than the activation's launch (run 32b: one row 2.95 ->
  3.24 ms, 64 rows -11%).
- int8 and fp8 (`_channel_kernel`): weights (and, for fp8, the quantized activations) convert to
  the dot's 16-bit type exactly, the per-channel and per-token scales multiply the float32 tile
  once at the end. One fp8 row can instead take fp8_row_gemv.py's kernel, which quantizes x
  itself: one launch per linear instead of two.

Which tile a shape runs is quant_tuning.py's choice; quant_convert.py holds the whole-tensor
conversions (per-row fp8 activations, int4 weights dequantized for prefill).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import arrival_counts, jit_keys, pdl
from runtime_service.model.kernels.gemv import (GemvConfig, _split_sum_kernel, grid_launcher,
                                                load_k_tiles, row_tile)

_SUM_BLOCK = 1024


# Four packed bytes (one 32-bit register, $8) -> their low nibbles as float32 128 + q ($0-$3)
# and their high nibbles as float32 2048 + q ($4-$7). A nibble and-ed into bits 16-19 of 128.0
# (0x43000000) or bits 12-15 of 2048.0 (0x45000000) is that power of two plus q, exactly; the low
# nibbles sit at bits 0, 8, 16, 24 and the high ones at 4, 12, 20, 28, so four shifts shared by
# both halves bring every nibble there: eight LOP3s and four shifts per four bytes.
_UNPACK_INT4_PTX = tl.constexpr("""{
.reg .b32 l16, l8, r8, r16;
shl.b32 l16, $8, 16;
shl.b32 l8, $8, 8;
shr.u32 r8, $8, 8;
shr.u32 r16, $8, 16;
lop3.b32 $0, l16, 0x000F0000, 0x43000000, 0xea;
lop3.b32 $1, l8, 0x000F0000, 0x43000000, 0xea;
lop3.b32 $2, $8, 0x000F0000, 0x43000000, 0xea;
lop3.b32 $3, r8, 0x000F0000, 0x43000000, 0xea;
lop3.b32 $4, l8, 0x0000F000, 0x45000000, 0xea;
lop3.b32 $5, $8, 0x0000F000, 0x45000000, 0xea;
lop3.b32 $6, r8, 0x0000F000, 0x45000000, 0xea;
lop3.b32 $7, r16, 0x0000F000, 0x45000000, 0xea;
}""")
_LOW_OFFSET = tl.constexpr(128.0)
_HIGH_OFFSET = tl.constexpr(2048.0)


@jit_keys.helper
@triton.jit
def _unpack_nibbles(packed):
    """uint8 bytes -> (128 + low nibble, 2048 + high nibble) as float32, exact. Each output
    element comes from the byte of the same element, however Triton groups elements into
    registers, so the result does not depend on the layout."""
    return tl.inline_asm_elementwise(_UNPACK_INT4_PTX, "=f,=f,=f,=f,=f,=f,=f,=f,r", [packed],
                                     dtype=(tl.float32, tl.float32), is_pure=True, pack=4)


@triton.jit
def _sum_splits_when_last(y, Partials, Final, Bias, Counters, counter, offs, cols, mask,
                          split_stride, pid_k, SPLIT_K, HAS_BIAS: tl.constexpr):
    """A split-K program's end with its splits summed in the same launch (FUSED_SUM): it writes
    its float32 partial `y` at `offs` of its split's [M, N] slab of Partials, then counts
    itself in at `counter` (arrival_counts.py); the program that counts last sums the SPLIT_K
    partials in split order, as `_split_sum_kernel` does (so the same bits), adds the bias
    (`cols`: each element's column, `y`'s shape), writes Final and sets the counter back to
    zero. The ordering is the split-K decode attention's: a CTA barrier, one thread's acq_rel
    add, the partials read from L2 (.cg). One launch a linear instead of two (bench/NOTES.md,
    run 20b: the split sums' launches were 0.195 ms of an FP8 decode step). Returns whether
    this program was the last."""
    tl.store(Partials + pid_k * split_stride + offs, y, mask=mask)
    tl.debug_barrier()                  # every thread's partial, before the count
    last = tl.atomic_add(Counters + counter, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1
    if last:
        total = tl.zeros(y.shape, tl.float32)
        for split in range(SPLIT_K):
            total += tl.load(Partials + split * split_stride + offs, mask=mask, other=0.0,
                             cache_modifier=".cg")
        if HAS_BIAS:
            total += tl.load(Bias + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Final + offs, total.to(Final.dtype.element_ty), mask=mask)
        tl.store(Counters + counter, 0)
    return last


@triton.jit
def _finish_tile(y, Out, Final, Bias, Counters, counter, offs, cols, mask, split_stride, pid_k,
                 SPLIT_K, HAS_BIAS: tl.constexpr, FUSED_SUM: tl.constexpr):
    """An int4 program's float32 sums `y` to memory: summed with the other splits' in this
    launch (FUSED_SUM), or to its split's slab of Out (the output itself when unsplit), plus
    the bias where the launch was given it."""
    if FUSED_SUM:
        _sum_splits_when_last(y, Out, Final, Bias, Counters, counter, offs, cols, mask,
                              split_stride, pid_k, SPLIT_K, HAS_BIAS)
    else:
        if HAS_BIAS:
            y += tl.load(Bias + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Out + pid_k * split_stride + offs, y.to(Out.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "N", "SPLIT_K"])
def _int4_fma_kernel(X, QW, Scales, Zeros, Bias, Out, Final, Counters, M, N, K, stride_xm,
                     k_per_split, SPLIT_K, HAS_BIAS: tl.constexpr, FUSED_SUM: tl.constexpr,
                     GROUP: tl.constexpr, GROUPS_PER_TILE: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr):
    """One row of x per program, CUDA cores only (gemv.py's `_fma_kernel` for int4). The tile is
    [BLOCK_N, groups, GROUP / 2] bytes; byte j of a group holds its columns j and GROUP / 2 + j
    (`pack_for_device`), so x is two plain [groups, GROUP / 2] loads.

    Its loop used to be limited by instruction issue (Nsight Compute, bench/NOTES.md run 16).
    So the weights are used as `_unpack_nibbles` gives them, offset by 128 (low) and 2048
    (high), and every correction waits for the end of each group:
    sum_j s (q_j - z) x_j = s (sum_j v_j x_j - sum_j o_j x_j - z sum_j x_j), where v = o + q and
    the x sums are shared by all rows of the tile. That leaves one shift, two LOP3s and three
    float32 operations per weight byte (bench/kernel_sass.py); the offsets cost float32
    cancellation well under the output's own bf16 rounding. With half the instructions, bytes
    in flight became the limit: small tiles with three pipeline stages won (run 17).

    FUSED_SUM, here as in the tensor-core kernels below: the K splits are summed by the
    launch's last program per output tile (`_finish_tile`)."""
    pdl.await_previous_kernel()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = tl.program_id(2)
    HALF: tl.constexpr = GROUP // 2
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    num_groups = K // GROUP
    offs_g = tl.arange(0, GROUPS_PER_TILE)
    offs_h = tl.arange(0, HALF)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    w_ptrs = (QW + w_rows[:, None, None] * (K // 2) + k_start // 2
              + (offs_g[:, None] * HALF + offs_h[None, :])[None, :, :])
    sz_offs = w_rows[:, None] * num_groups + k_start // GROUP + offs_g[None, :]
    x_ptrs = X + row * stride_xm + k_start + offs_g[:, None] * GROUP + offs_h[None, :]
    acc = tl.zeros((BLOCK_N, GROUPS_PER_TILE, HALF), tl.float32)
    corrections = tl.zeros((BLOCK_N, GROUPS_PER_TILE), tl.float32)
    for k in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        lo, hi = _unpack_nibbles(tl.load(w_ptrs))
        scale = tl.load(Scales + sz_offs).to(tl.float32)
        zero = tl.load(Zeros + sz_offs).to(tl.float32)
        x_lo = tl.load(x_ptrs).to(tl.float32)
        x_hi = tl.load(x_ptrs + HALF).to(tl.float32)
        acc += (lo * x_lo[None, :, :] + hi * x_hi[None, :, :]) * scale[:, :, None]
        sum_lo = tl.sum(x_lo, axis=1)
        sum_hi = tl.sum(x_hi, axis=1)
        offsets = (_LOW_OFFSET * sum_lo + _HIGH_OFFSET * sum_hi)[None, :]
        corrections += scale * (offsets + zero * (sum_lo + sum_hi)[None, :])
        w_ptrs += BLOCK_K // 2
        x_ptrs += BLOCK_K
        sz_offs += GROUPS_PER_TILE
    y = tl.sum(tl.sum(acc, axis=2), axis=1) - tl.sum(corrections, axis=1)
    _finish_tile(y, Out, Final, Bias, Counters, row * tl.num_programs(0) + pid_n, row * N + cols,
                 cols, cols < N, M * N, pid_k, SPLIT_K, HAS_BIAS, FUSED_SUM)


# The same four bytes ($4) -> their low nibbles ($0, $1) and high nibbles ($2, $3) as four 16-bit
# floats each, two per register, MAGIC + q exactly (the pattern of MAGIC, 0x4300 = 128.0 in bf16
# or 0x6400 = 1024.0 in fp16, or-ed with q). PRMT spreads bytes 0, 1 (then 2, 3) into the two
# halves of a register, so one LOP3 makes two weights: eight instructions per four bytes.
_UNPACK_INT4_X2_PTX = """{
.reg .b32 t0, t1, u0, u1;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
shr.u32 u0, t0, 4;
shr.u32 u1, t1, 4;
lop3.b32 $0, t0, 0x000F000F, MAGIC2, 0xea;
lop3.b32 $1, t1, 0x000F000F, MAGIC2, 0xea;
lop3.b32 $2, u0, 0x000F000F, MAGIC2, 0xea;
lop3.b32 $3, u1, 0x000F000F, MAGIC2, 0xea;
}"""
_UNPACK_BF16_PTX = tl.constexpr(_UNPACK_INT4_X2_PTX.replace("MAGIC2", "0x43004300"))
_UNPACK_FP16_PTX = tl.constexpr(_UNPACK_INT4_X2_PTX.replace("MAGIC2", "0x64006400"))


@jit_keys.helper
@triton.jit
def _unpack_nibbles_16(packed, DTYPE: tl.constexpr):
    """uint8 bytes -> (MAGIC + low nibble, MAGIC + high nibble) in DTYPE (bf16: 128, fp16:
    1024), exact; each output element comes from its own input element's byte."""
    if DTYPE == tl.bfloat16:
        return tl.inline_asm_elementwise(_UNPACK_BF16_PTX, "=r,=r,=r,=r,r", [packed],
                                         dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    else:
        return tl.inline_asm_elementwise(_UNPACK_FP16_PTX, "=r,=r,=r,=r,r", [packed],
                                         dtype=(tl.float16, tl.float16), is_pure=True, pack=4)


@triton.jit(do_not_specialize=["M", "N", "SPLIT_K"])
def _int4_dot_kernel(X, QW, Scales, Zeros, Bias, Out, Final, Counters, M, N, K, stride_xm,
                     k_per_split, SPLIT_K, HAS_BIAS: tl.constexpr, FUSED_SUM: tl.constexpr,
                     GROUP: tl.constexpr, GROUPS_PER_TILE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MAGIC: tl.constexpr,
                     MAGIC_VALUE: tl.constexpr):
    """Rows of x padded to a tensor-core tile. Each group is dequantized in x's 16-bit type:
    a nibble or-ed into the mantissa of MAGIC_VALUE (0x4300 = 128 in bf16, 0x6400 = 1024 in
    fp16) is MAGIC_VALUE + q exactly, minus (MAGIC_VALUE + z) is q - z exactly, times the scale
    rounds once, as (q - z) * s in float32 rounded would. The group's low and high halves
    (`pack_for_device`'s layout) meet x's matching halves in two dots, so nothing is
    re-interleaved.

    On Hopper the dots are wgmma, whose weight operand must sit in shared memory: each pass
    dequantizes, stores, waits at a barrier, then multiplies. At 64 rows the tile moves about
    0.9 TB/s, bound by instruction issue (7.5 a weight byte a lane, bench/kernel_sass.py), not by
    that wait: `_int4_swap_kernel`, which has none, is no faster there (bench/NOTES.md, run 28c)."""
    pdl.await_previous_kernel()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GROUP // 2
    dtype = X.dtype.element_ty
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Padding rows and columns re-read the last real one: loads need no mask; never stored.
    x_rows = tl.minimum(rows, M - 1)
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    num_groups = K // GROUP
    x_base = X + x_rows[:, None] * stride_xm + tl.arange(0, HALF)[None, :]
    w_base = QW + w_rows[:, None] * (K // 2) + tl.arange(0, HALF)[None, :]
    sz_base = w_rows * num_groups
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        for g in tl.static_range(GROUPS_PER_TILE):
            k0 = k + g * GROUP
            lo, hi = _unpack_nibbles_16(tl.load(w_base + k0 // 2), dtype)
            scale = tl.load(Scales + sz_base + k0 // GROUP)[:, None]
            offset = (MAGIC_VALUE + tl.load(Zeros + sz_base + k0 // GROUP).to(tl.float32)).to(
                dtype)[:, None]
            w_lo = (lo - offset) * scale
            w_hi = (hi - offset) * scale
            acc = tl.dot(tl.load(x_base + k0), tl.trans(w_lo), acc)
            acc = tl.dot(tl.load(x_base + k0 + HALF), tl.trans(w_hi), acc)
    tile_cols = tl.broadcast_to(cols[None, :], (BLOCK_M, BLOCK_N))
    _finish_tile(acc, Out, Final, Bias, Counters, pid_m * tl.num_programs(0) + pid_n,
                 rows[:, None] * N + tile_cols, tile_cols, (rows[:, None] < M) & (tile_cols < N),
                 M * N, pid_k, SPLIT_K, HAS_BIAS, FUSED_SUM)


@triton.jit(do_not_specialize=["M", "N", "SPLIT_K"])
def _int4_swap_kernel(X, QW, Scales, Zeros, Bias, Out, Final, Counters, M, N, K, stride_xm,
                      k_per_split, SPLIT_K, HAS_BIAS: tl.constexpr, FUSED_SUM: tl.constexpr,
                      GROUP: tl.constexpr, GROUPS_PER_TILE: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MAGIC: tl.constexpr,
                      MAGIC_VALUE: tl.constexpr, SLICES: tl.constexpr):
    """`_int4_dot_kernel` with the operands swapped (out^T = W x^T) and the weight tile cut into
    SLICES slices of its rows, one per warp, as a batched dot [SLICES, BLOCK_N / SLICES, K] x
    [SLICES, K, BLOCK_M] (x broadcast to every slice). Triton lowers a batched dot to mma.sync,
    whose operands are registers: each warp multiplies the weights it just dequantized, with no
    shared-memory store or barrier between. (The unbatched swapped dot became wgmma with a
    register operand, which gave wrong sums now and then under Triton 3.6: bench/NOTES.md, run
    16.) Same dequantization, same products; only the float32 summation order differs from the
    dot kernel's. Run 28c: 3-10% faster than the dot tiles on three of Llama-3-8B's four
    projections at 16 rows, level at 64 rows, where both are bound by instruction issue."""
    pdl.await_previous_kernel()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    HALF: tl.constexpr = GROUP // 2
    SLICE: tl.constexpr = BLOCK_N // SLICES
    dtype = X.dtype.element_ty
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid_n * BLOCK_N + tl.arange(0, SLICES)[:, None] * SLICE
            + tl.arange(0, SLICE)[None, :])                                      # [SLICES, SLICE]
    x_rows = tl.minimum(rows, M - 1)
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    num_groups = K // GROUP
    xt_base = X + x_rows[None, :] * stride_xm + tl.arange(0, HALF)[:, None]     # [HALF, BLOCK_M]
    w_base = QW + w_rows[:, :, None] * (K // 2) + tl.arange(0, HALF)[None, None, :]
    sz_base = w_rows * num_groups
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros((SLICES, SLICE, BLOCK_M), tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        for g in tl.static_range(GROUPS_PER_TILE):
            k0 = k + g * GROUP
            lo, hi = _unpack_nibbles_16(tl.load(w_base + k0 // 2), dtype)
            scale = tl.load(Scales + sz_base + k0 // GROUP)[:, :, None]
            offset = (MAGIC_VALUE + tl.load(Zeros + sz_base + k0 // GROUP).to(tl.float32)).to(
                dtype)[:, :, None]
            x_lo = tl.broadcast_to(tl.load(xt_base + k0)[None], (SLICES, HALF, BLOCK_M))
            x_hi = tl.broadcast_to(tl.load(xt_base + k0 + HALF)[None], (SLICES, HALF, BLOCK_M))
            acc = tl.dot((lo - offset) * scale, x_lo, acc)
            acc = tl.dot((hi - offset) * scale, x_hi, acc)
    tile_cols = tl.broadcast_to(cols[:, :, None], (SLICES, SLICE, BLOCK_M))
    _finish_tile(acc, Out, Final, Bias, Counters, pid_m * tl.num_programs(0) + pid_n,
                 rows[None, None, :] * N + tile_cols, tile_cols,
                 (rows[None, None, :] < M) & (tile_cols < N), M * N, pid_k, SPLIT_K, HAS_BIAS,
                 FUSED_SUM)


@triton.jit(do_not_specialize=["M", "N"])
def _channel_kernel(X, XScale, QW, Scales, Bias, Out, M, N, K, stride_xm, k_per_split,
                    HAS_XSCALE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    EVEN_K: tl.constexpr):
    pdl.await_previous_kernel()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    x_rows = tl.minimum(rows, M - 1)
    w_rows = tl.minimum(cols, N - 1).to(tl.int64)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + x_rows[:, None] * stride_xm + k_start + offs_k[None, :]
    w_ptrs = QW + w_rows[:, None] * K + k_start + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        w, xk = load_k_tiles(w_ptrs, x_ptrs, k, offs_k, K, EVEN_K, False)
        acc = tl.dot(xk.to(DOT_DTYPE), tl.trans(w.to(DOT_DTYPE)), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    acc *= tl.load(Scales + w_rows)[None, :]
    if HAS_XSCALE:
        acc *= tl.load(XScale + x_rows)[:, None]
    if HAS_BIAS:
        acc += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out_ptrs = Out + (pid_k * M + rows[:, None]) * N + cols[None, :]
    tl.store(out_ptrs, acc.to(Out.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


# ---- launchers (inputs already checked by quant_linear.py) ------------------------------------

def finish_launch(x, bias, out_dtype, n, config: GemvConfig, launch, warmup: bool = False,
                  num_counters: int = 0) -> torch.Tensor:
    """Allocates the output (or the split partials) and runs `launch(target, fused_bias, final,
    counters)`. Split K: with `config.fused_sum` and `num_counters` arrival counters to spare,
    the launch sums its own splits into `final` (fp8_row_gemv's `_sum_splits_when_last`);
    otherwise `_split_sum_kernel` sums them in a launch of its own (with `warmup`, compiles it
    only)."""
    rows = x.shape[0]
    out = torch.empty((rows, n), dtype=out_dtype, device=x.device)
    split = config.split_k
    if split == 1:
        launch(out, bias, None, None)
        return out
    partials = torch.empty((split, rows, n), dtype=torch.float32, device=x.device)
    counters = (split_counters(x.device, num_counters) if config.fused_sum and num_counters
                else None)
    if counters is not None:
        launch(partials, bias, out, counters)
        return out
    launch(partials, None, None, None)      # no counters to spare: the split sum's launch
    grid_launcher(_split_sum_kernel, (triton.cdiv(n, _SUM_BLOCK), rows), warmup)(
        partials, bias, out, rows, n, split, HAS_BIAS=bias is not None, BLOCK=_SUM_BLOCK,
        num_warps=4)
    return out


# The int4 dot's magic numbers per x dtype: the 16-bit pattern whose low mantissa bits take a
# nibble, and its value (bf16 0x4300 = 128, fp16 0x6400 = 1024).
_INT4_MAGIC = {torch.bfloat16: (0x4300, 128.0), torch.float16: (0x6400, 1024.0)}


def launch_int4(x, qweight, scales, zeros, group_size: int, bias, config: GemvConfig,
                warmup: bool = False):
    """qweight in `pack_for_device`'s layout. `warmup`: compile, do not run (`precompile`)."""
    rows, k = x.shape
    n = qweight.shape[0]
    groups_per_tile = config.block_k // group_size
    k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), config.split_k) * config.block_k
    n_blocks = triton.cdiv(n, config.block_n)
    block_m = 1 if config.kind == "fma" else row_tile(rows)
    grid = (n_blocks, config.split_k, triton.cdiv(rows, block_m))

    def launch(target, fused_bias, final, counters):
        args = (x, qweight, scales, zeros, fused_bias, target, final, counters, rows, n, k,
                x.stride(0), k_per_split, config.split_k)
        options = dict(HAS_BIAS=fused_bias is not None, FUSED_SUM=final is not None,
                       GROUP=group_size,
                       GROUPS_PER_TILE=groups_per_tile, BLOCK_N=config.block_n,
                       BLOCK_K=config.block_k, num_warps=config.num_warps,
                       num_stages=config.num_stages)
        if config.kind == "fma":
            grid_launcher(_int4_fma_kernel, grid, warmup)(
                *args, NUM_STAGES=config.num_stages, **options)
        else:
            magic, magic_value = _INT4_MAGIC[x.dtype]
            tile = dict(BLOCK_M=block_m, MAGIC=magic, MAGIC_VALUE=magic_value, **options)
            if config.kind == "swap":     # a warp per slice of the weight rows
                grid_launcher(_int4_swap_kernel, grid, warmup)(
                    *args, SLICES=config.num_warps, **tile)
            else:
                grid_launcher(_int4_dot_kernel, grid, warmup)(*args, **tile)

    return finish_launch(x, bias, x.dtype, n, config, launch, warmup, grid[0] * grid[2])


def launch_channel(x, x_scales, qweight, scales, bias, out_dtype, config: GemvConfig,
                   warmup: bool = False):
    """int8 (x in the engine dtype, `x_scales` None) or fp8 (x e4m3 with per-row scales)."""
    rows, k = x.shape
    n = qweight.shape[0]
    k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), config.split_k) * config.block_k
    dot_dtype = tl.float16 if x.dtype == torch.float8_e4m3fn else (
        tl.bfloat16 if x.dtype == torch.bfloat16 else tl.float16)

    def launch(target, fused_bias, final, counters):     # (no fused split sum here)
        grid_launcher(_channel_kernel, (triton.cdiv(n, config.block_n), config.split_k), warmup)(
            x, x_scales, qweight, scales, fused_bias, target, rows, n, k, x.stride(0),
            k_per_split, HAS_XSCALE=x_scales is not None, HAS_BIAS=fused_bias is not None,
            DOT_DTYPE=dot_dtype, BLOCK_M=row_tile(rows), BLOCK_N=config.block_n,
            BLOCK_K=config.block_k, EVEN_K=k % config.block_k == 0,
            num_warps=config.num_warps, num_stages=config.num_stages)

    return finish_launch(x, bias, out_dtype, n, config, launch, warmup)


def split_counters(device: torch.device, needed: int) -> torch.Tensor | None:
    """Arrival counters for a fused split sum (arrival_counts.py), or None where there are too
    few to grow during a graph capture: the split sum's own launch then runs instead."""
    try:
        return arrival_counts.counts_for(device, needed)
    except RuntimeError:
        return None
