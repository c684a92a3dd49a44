"""Rotary embedding (rotate-half layout) applied in place to q and k in one launch.

cos/sin come from a per-position table in the model dtype (built by the layer with the same torch
code the reference uses), and the kernel asks for the reference's roundings (each product, then the
sum, in the model dtype). The compiler may still fuse a product into the sum, so a few elements can
differ from the reference by one unit in the last place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate(ptrs_lo, c, s, mask, HALF: tl.constexpr):
    x1 = tl.load(ptrs_lo, mask=mask, other=0.0)
    x2 = tl.load(ptrs_lo + HALF, mask=mask, other=0.0)
    dtype = x1.dtype
    lo = (x1 * c).to(dtype).to(tl.float32) + (-x2 * s).to(dtype).to(tl.float32)
    hi = (x2 * c).to(dtype).to(tl.float32) + (x1 * s).to(dtype).to(tl.float32)
    tl.store(ptrs_lo, lo.to(dtype), mask=mask)
    tl.store(ptrs_lo + HALF, hi.to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(Q, K, positions, Cos, Sin, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_c, max_position,
                   NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr, HALF: tl.constexpr,
                   BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions + token).to(tl.int64)
    pos = tl.minimum(tl.maximum(pos, 0), max_position - 1)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    c = tl.load(Cos + pos * stride_c + offs_d, mask=d_mask, other=0.0)[None, :]
    s = tl.load(Sin + pos * stride_c + offs_d, mask=d_mask, other=0.0)[None, :]
    offs_hq = tl.arange(0, BLOCK_HQ)
    _rotate(Q + token * stride_qt + offs_hq[:, None] * stride_qh + offs_d[None, :], c, s,
            (offs_hq < NUM_Q_HEADS)[:, None] & d_mask[None, :], HALF)
    offs_hk = tl.arange(0, BLOCK_HK)
    _rotate(K + token * stride_kt + offs_hk[:, None] * stride_kh + offs_d[None, :], c, s,
            (offs_hk < NUM_K_HEADS)[:, None] & d_mask[None, :], HALF)


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q [T, Hq, D] and k [T, Hk, D] in place; cos/sin [max_position, D] in q's dtype.
    Positions past the table are clamped to its last row (the layer sizes the table to the
    model's maximum position)."""
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"expected q [T, Hq, D], k [T, Hk, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    head_dim = q.shape[2]
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != head_dim:
        raise ValueError(f"cos/sin must be [max_position, {head_dim}]; got {tuple(cos.shape)}")
    if q.stride(2) != 1 or k.stride(2) != 1 or cos.stride(1) != 1 or sin.stride() != cos.stride():
        raise ValueError("rotary needs the head dimension contiguous")
    if positions.shape != (q.shape[0],):
        raise ValueError(f"positions must be [{q.shape[0]}], got {tuple(positions.shape)}")
    if q.dtype != k.dtype or cos.dtype != q.dtype:
        raise ValueError(f"dtypes disagree: q {q.dtype}, k {k.dtype}, cos {cos.dtype}")
    if q.shape[0]:
        half = head_dim // 2
        _rotary_kernel[(q.shape[0],)](
            q, k, positions, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            cos.stride(0), cos.shape[0],
            NUM_Q_HEADS=q.shape[1], NUM_K_HEADS=k.shape[1], HALF=half,
            BLOCK_HQ=triton.next_power_of_2(q.shape[1]),
            BLOCK_HK=triton.next_power_of_2(k.shape[1]),
            BLOCK_HALF=triton.next_power_of_2(half), num_warps=4)
    return q, k


def rotary_reference(q, k, positions, cos, sin):
    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    c, s = cos[positions][:, None, :], sin[positions][:, None, :]
    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
