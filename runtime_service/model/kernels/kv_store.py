"""The quantizing half of the KV-cache stores, in Triton: per-(token, head) scale and int8 / fp8
values by kv_quant.py's contract, shared by paged_attention.store_kv and
rotary.rotary_store_kv_ so that both write the same bits.
"""

from __future__ import annotations

import triton
import triton.language as tl

_ROUNDER = tl.constexpr(12582912.0)     # 1.5 * 2^23


@triton.jit
def kv_scale(amax, QMAX: tl.constexpr):
    """Per-head scale from the head's amax (kv_quant.py's contract, IEEE division)."""
    return tl.maximum(tl.math.div_rn(amax, QMAX), 1e-8)


@triton.jit
def kv_quantize(x, scale, IS_INT8: tl.constexpr):
    """x [H, D] float32 over per-head scales [H] -> the cache's quantized values, in float32
    (round half to even and clamp for int8; the caller's cast rounds to e4m3 for fp8)."""
    y = tl.math.div_rn(x, scale[:, None])
    if IS_INT8:
        # Adding and removing 1.5 * 2^23 rounds |y| < 2^22 to an integer, half to even, in
        # float32 arithmetic itself (as torch.round does).
        y = (y + _ROUNDER) - _ROUNDER
        y = tl.minimum(tl.maximum(y, -128.0), 127.0)
    return y


@triton.jit
def store_quantized_heads(x, Dst, Scale_dst, mask, h_mask, QMAX: tl.constexpr,
                          IS_INT8: tl.constexpr):
    """Quantizes x [H, D] per head and stores it at `Dst` [H, D] pointers, the scales at
    `Scale_dst` [H] pointers."""
    xf = tl.where(mask, x.to(tl.float32), 0.0)
    scale = kv_scale(tl.max(tl.abs(xf), axis=1), QMAX)
    tl.store(Dst, kv_quantize(xf, scale, IS_INT8).to(Dst.dtype.element_ty), mask=mask)
    tl.store(Scale_dst, scale, mask=h_mask)
