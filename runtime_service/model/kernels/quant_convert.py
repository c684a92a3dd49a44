"""Whole-tensor conversions around the quantized GEMVs (quant_gemv.py): activations quantized
per row to fp8 for the fp8 tensor-core dots, and int4 weights dequantized to the engine dtype
for the prefill GEMM, where many rows share each weight and a dense matmul beats unpacking in
every program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import pdl
from runtime_service.model.kernels.gemv import _silu_mul, grid_launcher

FP8_MAX = tl.constexpr(448.0)     # the largest e4m3 value; fp8_row_gemv and rms_norm use it too


@triton.jit
def _row_values(X, k, offs, K, GATED: tl.constexpr):
    """x[k + offs] of one row, or with GATED (the row is [gate | up], 2K wide) silu(gate) * up
    there, rounded as activation.py's kernel rounds it."""
    x = tl.load(X + k + offs, mask=k + offs < K, other=0.0)
    if GATED:
        x = _silu_mul(x, tl.load(X + K + k + offs, mask=k + offs < K, other=0.0))
    return x


@triton.jit
def _quantize_rows_kernel(X, XQ, XScale, K, stride_xm, GATED: tl.constexpr,
                          BLOCK: tl.constexpr, ONE_PASS: tl.constexpr):
    """One program per row: scale = max(amax|x| / 448, 1e-12), xq = e4m3(x / scale). GATED:
    the row is silu(gate) * up of a [gate | up] row, so SwiGLU's down projection quantizes its
    input without an activation launch first. ONE_PASS (the row fits one BLOCK): the row stays
    in registers between its maximum and its codes, so it is read, and its activation formed,
    once; longer rows take a second pass, which finds them in L2. A maximum does not depend on
    how the row is blocked, so both give the same bits."""
    pdl.await_previous_kernel()
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    x_row = X + row * stride_xm
    if ONE_PASS:
        x = _row_values(x_row, 0, offs, K, GATED).to(tl.float32)
        scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), axis=0), FP8_MAX), 1e-12)
        tl.store(XScale + row, scale)
        q = tl.math.div_rn(x, scale)
        tl.store(XQ + row * K + offs, q.to(XQ.dtype.element_ty), mask=offs < K)
    else:
        amax = tl.zeros((BLOCK,), tl.float32)
        for k in range(0, K, BLOCK):
            amax = tl.maximum(amax, tl.abs(_row_values(x_row, k, offs, K, GATED).to(tl.float32)))
        scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), FP8_MAX), 1e-12)
        tl.store(XScale + row, scale)
        for k in range(0, K, BLOCK):
            q = tl.math.div_rn(_row_values(x_row, k, offs, K, GATED).to(tl.float32), scale)
            tl.store(XQ + row * K + k + offs, q.to(XQ.dtype.element_ty), mask=k + offs < K)


@triton.jit
def _dequant_int4_kernel(QW, Scales, Zeros, Out, N, K, GROUP: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """Program (row block, group): w = (q - z) * s for GROUP columns of BLOCK_N rows, from
    `pack_for_device`'s layout (byte j: the group's columns j and GROUP / 2 + j)."""
    pdl.await_previous_kernel()
    HALF: tl.constexpr = GROUP // 2
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = rows < N
    rows = tl.minimum(rows, N - 1).to(tl.int64)
    group = tl.program_id(1)
    offs_h = tl.arange(0, HALF)
    num_groups = K // GROUP
    packed = tl.load(QW + rows[:, None] * (K // 2) + group * HALF + offs_h[None, :])
    scale = tl.load(Scales + rows * num_groups + group).to(tl.float32)[:, None]
    zero = tl.load(Zeros + rows * num_groups + group).to(tl.float32)[:, None]
    low = ((packed & 0xF).to(tl.float32) - zero) * scale
    high = ((packed >> 4).to(tl.float32) - zero) * scale
    out = Out + rows[:, None] * K + group * GROUP + offs_h[None, :]
    tl.store(out, low.to(Out.dtype.element_ty), mask=in_n[:, None])
    tl.store(out + HALF, high.to(Out.dtype.element_ty), mask=in_n[:, None])


def quantize_rows_fp8(x: torch.Tensor, warmup: bool = False, gated: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 per-row scales [M]); graph-safe. `gated`: x is
    [M, 2K] = [gate | up] and the rows quantized are silu(gate) * up, the same codes as
    `silu_and_mul` then this. With `warmup` the kernel only compiles (the outputs are left
    unwritten)."""
    if x.dim() != 2 or x.stride(1) != 1 or (gated and x.shape[1] % 2):
        raise ValueError(f"expected [M, {'2K' if gated else 'K'}] with a contiguous last dim, "
                         f"got {tuple(x.shape)}")
    rows, k = x.shape[0], x.shape[1] // 2 if gated else x.shape[1]
    xq = torch.empty((rows, k), dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty(rows, dtype=torch.float32, device=x.device)
    launch_quantize_rows(x, xq, scales, k, gated, warmup)
    return xq, scales


# The longest row quantized in one pass: 16384 values are 32 a thread at 16 warps (run 27b: the
# two-pass kernel took 10.7 us a call at 256 rows, about three times its bytes' time).
ONE_PASS_LIMIT = 16384


def launch_quantize_rows(x, xq, scales, k: int, gated: bool, warmup: bool = False,
                         one_pass_limit: int = ONE_PASS_LIMIT) -> None:
    """`_quantize_rows_kernel` over x's rows into xq and scales: in one pass where the padded
    row fits `one_pass_limit`, else in passes of 4096."""
    padded = triton.next_power_of_2(k)
    one_pass = padded <= one_pass_limit
    block = padded if one_pass else min(4096, padded)
    grid_launcher(_quantize_rows_kernel, (x.shape[0],), warmup)(
        x, xq, scales, k, x.stride(0), GATED=gated, BLOCK=block, ONE_PASS=one_pass,
        num_warps=min(16, max(4, block // 512)))


def dequantize_int4(qweight, scales, zeros, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    n, k = qweight.shape[0], qweight.shape[1] * 2
    out = torch.empty((n, k), dtype=dtype, device=qweight.device)
    block_n = 16
    _dequant_int4_kernel[(triton.cdiv(n, block_n), k // group_size)](
        qweight, scales, zeros, out, n, k, GROUP=group_size, BLOCK_N=block_n, num_warps=4,
        **pdl.LAUNCH)
    return out
