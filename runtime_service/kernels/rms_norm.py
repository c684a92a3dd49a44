"""RMSNorm in one pass per row, rounding where transformers' LlamaRMSNorm rounds.

The reference (and HF) computes in float32, casts the normalised row to the model dtype, then
multiplies by the weight in that dtype; the kernel does the same roundings, so outputs differ
from the reference only through the order of the float32 sum of squares.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(X, W, Out, stride_x, stride_o, eps, HIDDEN: tl.constexpr,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / HIDDEN + eps)
    normed = (x * rstd).to(Out.dtype.element_ty).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * stride_o + offs, (w * normed).to(Out.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H] (last dim contiguous), weight [H] in x's dtype -> normalised [..., H]."""
    hidden = x.shape[-1]
    if weight.shape != (hidden,) or weight.dtype != x.dtype:
        raise ValueError(f"weight must be [{hidden}] in {x.dtype}; got {tuple(weight.shape)} "
                         f"{weight.dtype}")
    if x.stride(-1) != 1 or not weight.is_contiguous():
        raise ValueError("rms_norm needs the hidden dimension contiguous")
    rows = x.reshape(-1, hidden)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), eps,
                                           HIDDEN=hidden, BLOCK=block,
                                           num_warps=min(16, max(1, block // 512)))
    return out.view(x.shape)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.to(torch.float32)
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
