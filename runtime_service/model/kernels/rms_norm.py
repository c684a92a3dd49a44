"""RMSNorm in one pass per row, rounding where transformers' LlamaRMSNorm rounds; and the same norm
with the residual add before it fused in (`add_rms_norm`), which saves a decoder layer two launches.

The reference (and HF) computes in float32, casts the normalised row to the model dtype, then
multiplies by the weight in that dtype; the kernel does the same roundings, so outputs differ
from the reference only through the order of the float32 sum of squares. The fused kernel rounds
the residual sum to the model dtype, as torch's add does, before it stores or normalises it, so
that sum is bit-exact.

Both can also hand the normalised row on quantized to e4m3 per row (`to_fp8`), for an FP8 linear
that would quantize it anyway: the codes and scales of `quant_convert.quantize_rows_fp8` on the
row they would have stored, one launch a norm fewer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import jit_keys, pdl
from runtime_service.model.kernels.quant_convert import FP8_MAX


@jit_keys.helper
@triton.jit
def _row_offsets(BLOCK: tl.constexpr, VEC: tl.constexpr):
    """A row's BLOCK offsets as [BLOCK // VEC, VEC]: runs of VEC contiguous values. Every load
    and store of the norms goes through them, so no access is wider than VEC values, and
    Triton lays out the plain and the fp8-storing variants alike (VEC values a thread, 16
    bytes of the 16-bit row). Left 1-D, the fp8 variant's 16-byte stores of 16 codes made
    its layout 16 a thread, its sum of squares added in another order than the plain norm's,
    and now and then a row's rstd, and one code, differed in the last bit (bench/NOTES.md,
    run 27a's finding)."""
    return tl.arange(0, BLOCK // VEC)[:, None] * VEC + tl.arange(0, VEC)[None, :]


@jit_keys.helper
@triton.jit
def _store_normed_row(x, W, Out, XScale, row, offs, mask, eps, HIDDEN: tl.constexpr,
                      TO_FP8: tl.constexpr):
    """x: one row in float32 as [BLOCK // VEC, VEC] (`_row_offsets`), zero past HIDDEN; Out
    points at the row's first element. The normalised row is rounded to the model dtype
    (W's); with TO_FP8 it is then quantized to e4m3 as quant_convert's
    `_quantize_rows_kernel` does (scale max(amax / 448, 1e-12) to XScale, the codes to Out),
    so an fp8 linear reading it needs no quantizing launch."""
    rstd = tl.rsqrt(tl.sum(tl.sum(x * x, 1), 0) / HIDDEN + eps)
    dtype = W.dtype.element_ty
    normed = (x * rstd).to(dtype).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    y = (w * normed).to(dtype)
    if TO_FP8:
        y = y.to(tl.float32)
        amax = tl.max(tl.max(tl.abs(y), 1), 0)
        scale = tl.maximum(tl.math.div_rn(amax, FP8_MAX), 1e-12)
        tl.store(XScale + row, scale)
        y = tl.math.div_rn(y, scale)
    tl.store(Out + offs, y.to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(X, W, Out, XScale, stride_x, stride_o, eps, HIDDEN: tl.constexpr,
                     BLOCK: tl.constexpr, VEC: tl.constexpr, TO_FP8: tl.constexpr):
    pdl.await_previous_kernel()
    row = tl.program_id(0).to(tl.int64)
    offs = _row_offsets(BLOCK, VEC)
    mask = offs < HIDDEN
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    _store_normed_row(x, W, Out + row * stride_o, XScale, row, offs, mask, eps, HIDDEN, TO_FP8)


@triton.jit
def _add_rms_norm_kernel(X, R, W, Out, XScale, Sum, stride_x, stride_r, stride_o, stride_s, eps,
                         HIDDEN: tl.constexpr, BLOCK: tl.constexpr, VEC: tl.constexpr,
                         TO_FP8: tl.constexpr):
    pdl.await_previous_kernel()
    row = tl.program_id(0).to(tl.int64)
    offs = _row_offsets(BLOCK, VEC)
    mask = offs < HIDDEN
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(R + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
    summed = (x + r).to(Sum.dtype.element_ty)
    tl.store(Sum + row * stride_s + offs, summed, mask=mask)
    _store_normed_row(summed.to(tl.float32), W, Out + row * stride_o, XScale, row, offs, mask,
                      eps, HIDDEN, TO_FP8)


def _check_norm_args(x: torch.Tensor, weight: torch.Tensor) -> None:
    hidden = x.shape[-1]
    if weight.shape != (hidden,) or weight.dtype != x.dtype:
        raise ValueError(f"weight must be [{hidden}] in {x.dtype}; got {tuple(weight.shape)} "
                         f"{weight.dtype}")
    if x.stride(-1) != 1 or not weight.is_contiguous():
        raise ValueError("the norm needs the hidden dimension of x and weight contiguous")


def _launch_options(hidden: int) -> dict:
    block = triton.next_power_of_2(hidden)
    return dict(HIDDEN=hidden, BLOCK=block, VEC=min(8, block),
                num_warps=min(16, max(1, block // 512)))


def _normed_outputs(rows: torch.Tensor, to_fp8: bool):
    """The normalised rows' buffer (e4m3 codes with `to_fp8`, else the model dtype) and the
    per-row fp8 scales (None without `to_fp8`)."""
    dtype = torch.float8_e4m3fn if to_fp8 else rows.dtype
    out = torch.empty(rows.shape, dtype=dtype, device=rows.device)
    scales = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device) if to_fp8 else None
    return out, scales


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, to_fp8: bool = False):
    """x [..., H] (last dim contiguous), weight [H] in x's dtype -> normalised [..., H]; with
    `to_fp8`, that row quantized as `quantize_rows_fp8` quantizes it: (e4m3 codes [M, H],
    float32 scales [M]) over the rows flattened."""
    _check_norm_args(x, weight)
    rows = x.reshape(-1, x.shape[-1])
    out, scales = _normed_outputs(rows, to_fp8)
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, scales, rows.stride(0),
                                           out.stride(0), eps, TO_FP8=to_fp8,
                                           **_launch_options(rows.shape[1]), **pdl.LAUNCH)
    return (out, scales) if to_fp8 else out.view(x.shape)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                 to_fp8: bool = False):
    """x, residual [..., H] (same shape and dtype, last dim contiguous), weight [H] ->
    (rms_norm(x + residual), x + residual), the sum rounded to the dtype as torch rounds it.
    With `to_fp8` the norm comes as `rms_norm(..., to_fp8=True)` gives it: (codes, scales, sum)."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual must be {tuple(x.shape)} in {x.dtype}; got "
                         f"{tuple(residual.shape)} {residual.dtype}")
    if residual.stride(-1) != 1:
        raise ValueError("the norm needs the residual's hidden dimension contiguous")
    _check_norm_args(x, weight)
    rows = x.reshape(-1, x.shape[-1])
    residual_rows = residual.reshape(rows.shape)
    out, scales = _normed_outputs(rows, to_fp8)
    summed = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        _add_rms_norm_kernel[(rows.shape[0],)](
            rows, residual_rows, weight, out, scales, summed, rows.stride(0),
            residual_rows.stride(0), out.stride(0), summed.stride(0), eps, TO_FP8=to_fp8,
            **_launch_options(rows.shape[1]), **pdl.LAUNCH)
    if to_fp8:
        return out, scales, summed.view(x.shape)
    return out.view(x.shape), summed.view(x.shape)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.to(torch.float32)
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    summed = x + residual
    return rms_norm_reference(summed, weight, eps), summed
