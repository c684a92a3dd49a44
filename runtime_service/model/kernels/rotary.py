"""Rotary embedding (rotate-half layout) applied in place to q and k in one launch, and the same
rotation fused with the KV-cache store.

cos/sin come from a per-position table in the model dtype (built by the layer with the same torch
code the reference uses), and the kernels compute the reference's roundings (each product, then
the sum, in the model dtype), in float32 with explicit casts so that no product is fused into
the sum (`_rotated_element`).

`rotary_store_kv_` exists for decode, where each layer's rotary and store launches cost about as
much as the work they do: one launch rotates q in place and writes the rotated k (never written
back to k) and v straight into the paged caches. Both kernels rotate through `_rotate`, so the
fused result is bit-identical to `apply_rotary_` followed by `kv_store.store_kv`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from runtime_service.model.kernels import jit_keys, pdl
from runtime_service.model.kernels.kv_quant import (check_kv_scales, quant_meta,
                                                    quantize_kv_reference, scale_args)
from runtime_service.model.kernels.kv_store import kv_quantize, kv_scale
from runtime_service.model.kernels.pdl import INTERPRETED


@jit_keys.helper
@triton.jit
def _rotated_element(x, c, partner, s, negate):
    """x * c -+ partner * s with the reference's roundings: each product rounded to x's dtype,
    then the sum. The products and the sum run in float32 with explicit rounding (`mul_rn`,
    `add_rn`, exact for 16-bit products), which the compiler may not fuse: written as 16-bit
    arithmetic, a product and the sum became one HFMA2 with a single rounding (offline sm_90
    SASS, bench/NOTES.md run 25c), paired differently in two kernels that rotate alike."""
    dtype = x.dtype
    x, c, partner, s = x.to(tl.float32), c.to(tl.float32), partner.to(tl.float32), s.to(tl.float32)
    if INTERPRETED:     # no libdevice there (and numpy fuses no product into a sum)
        product, turned = (x * c).to(dtype), (partner * s).to(dtype)
    else:
        product, turned = libdevice.mul_rn(x, c).to(dtype), libdevice.mul_rn(partner, s).to(dtype)
    turned = tl.where(negate, -turned, turned)
    if INTERPRETED:
        return (product.to(tl.float32) + turned.to(tl.float32)).to(dtype)
    return libdevice.add_rn(product.to(tl.float32), turned.to(tl.float32)).to(dtype)


@jit_keys.helper
@triton.jit
def _rotated(src_lo, c, s, mask, HALF: tl.constexpr):
    """The rotated halves (in the input dtype) of the head vectors whose first halves `src_lo`
    points at."""
    x1 = tl.load(src_lo, mask=mask, other=0.0)
    x2 = tl.load(src_lo + HALF, mask=mask, other=0.0)
    return _rotated_element(x1, c, x2, s, True), _rotated_element(x2, c, x1, s, False)


@jit_keys.helper
@triton.jit
def _rotate(src_lo, dst_lo, c, s, mask, HALF: tl.constexpr):
    """Rotates into `dst_lo` (which may be `src_lo`)."""
    lo, hi = _rotated(src_lo, c, s, mask, HALF)
    tl.store(dst_lo, lo, mask=mask)
    tl.store(dst_lo + HALF, hi, mask=mask)


@jit_keys.helper
@triton.jit
def _store_quantized_halves(lo, hi, dst_lo, scale_dst, mask, h_mask, HALF: tl.constexpr,
                            QMAX: tl.constexpr, IS_INT8: tl.constexpr):
    """Quantizes head vectors given as halves [H, D/2] with one scale per head (kv_quant.py)."""
    lo = tl.where(mask, lo.to(tl.float32), 0.0)
    hi = tl.where(mask, hi.to(tl.float32), 0.0)
    scale = kv_scale(tl.maximum(tl.max(tl.abs(lo), axis=1), tl.max(tl.abs(hi), axis=1)), QMAX)
    tl.store(dst_lo, kv_quantize(lo, scale, IS_INT8).to(dst_lo.dtype.element_ty), mask=mask)
    tl.store(dst_lo + HALF, kv_quantize(hi, scale, IS_INT8).to(dst_lo.dtype.element_ty),
             mask=mask)
    tl.store(scale_dst, scale, mask=h_mask)


@jit_keys.helper
@triton.jit
def head_and_partner(rows, offs_d, mask, HALF: tl.constexpr):
    """Head vectors [R, D] from `rows` [R, 1] (each vector's element 0) and `offs_d` [1, D],
    and each element's rotation partner: element d pairs with d + D/2 (first half) or d - D/2.
    Loads only, so a kernel can issue them together before their arithmetic
    (`rotate_loaded`)."""
    x = tl.load(rows + offs_d, mask=mask, other=0.0)
    partner = tl.load(rows + tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF), mask=mask,
                      other=0.0)
    return x, partner


@jit_keys.helper
@triton.jit
def rotate_loaded(x, partner, offs_d, c, s, HALF: tl.constexpr):
    """`head_and_partner`'s vectors rotated in the layout a kernel reads them in, with `c`/`s`
    [1, D] holding the table's first half repeated (`table_half_offsets`); the first half's
    partners are negated. The roundings are `_rotated`'s, element for element, so the bits are
    those of the rotary kernels."""
    return _rotated_element(x, c, partner, s, offs_d < HALF)


@jit_keys.helper
@triton.jit
def table_half_offsets(offs_d, HALF: tl.constexpr):
    """Where element d of a head vector finds its cos/sin: the table's first half, repeated."""
    return offs_d % HALF


@jit_keys.helper
@triton.jit
def store_new_head(x, dst, scale_dst, offs_d, mask, KV_QUANT: tl.constexpr, QMAX: tl.constexpr,
                   IS_INT8: tl.constexpr):
    """Writes one new head vector x [1, D] (a key already rotated) into a cache slot, as
    `_rotary_store_kv_kernel` writes it: quantized with its per-head scale with KV_QUANT."""
    if KV_QUANT:
        x = tl.where(mask, x.to(tl.float32), 0.0)
        scale = kv_scale(tl.max(tl.abs(x), axis=1), QMAX)
        tl.store(dst + offs_d, kv_quantize(x, scale, IS_INT8).to(dst.dtype.element_ty),
                 mask=mask)
        tl.store(scale_dst + tl.arange(0, 1), scale)
    else:
        tl.store(dst + offs_d, x, mask=mask)


@triton.jit
def _cos_sin_row(positions, Cos, Sin, token, stride_c, max_position, offs_d, d_mask):
    pos = tl.load(positions + token).to(tl.int64)
    pos = tl.minimum(tl.maximum(pos, 0), max_position - 1)
    c = tl.load(Cos + pos * stride_c + offs_d, mask=d_mask, other=0.0)[None, :]
    s = tl.load(Sin + pos * stride_c + offs_d, mask=d_mask, other=0.0)[None, :]
    return c, s


@triton.jit
def _rotary_kernel(Q, K, positions, Cos, Sin, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_c, max_position,
                   NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr, HALF: tl.constexpr,
                   BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr):
    pdl.await_previous_kernel()
    token = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    c, s = _cos_sin_row(positions, Cos, Sin, token, stride_c, max_position, offs_d, d_mask)
    offs_hq = tl.arange(0, BLOCK_HQ)
    q_lo = Q + token * stride_qt + offs_hq[:, None] * stride_qh + offs_d[None, :]
    _rotate(q_lo, q_lo, c, s, (offs_hq < NUM_Q_HEADS)[:, None] & d_mask[None, :], HALF)
    offs_hk = tl.arange(0, BLOCK_HK)
    k_lo = K + token * stride_kt + offs_hk[:, None] * stride_kh + offs_d[None, :]
    _rotate(k_lo, k_lo, c, s, (offs_hk < NUM_K_HEADS)[:, None] & d_mask[None, :], HALF)


@triton.jit
def _rotary_store_kv_kernel(
    Q, K, V, K_cache, V_cache, positions, slots, Cos, Sin,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kb, stride_ks, stride_kh_c, stride_vb, stride_vs, stride_vh_c,
    stride_c, max_position, K_scale, V_scale, stride_sb, stride_ss,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, KV_QUANT: tl.constexpr, QMAX: tl.constexpr,
    IS_INT8: tl.constexpr, ROTATE_K: tl.constexpr,
):
    pdl.await_previous_kernel()
    token = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    c, s = _cos_sin_row(positions, Cos, Sin, token, stride_c, max_position, offs_d, d_mask)
    offs_hq = tl.arange(0, BLOCK_HQ)
    q_lo = Q + token * stride_qt + offs_hq[:, None] * stride_qh + offs_d[None, :]
    _rotate(q_lo, q_lo, c, s, (offs_hq < NUM_Q_HEADS)[:, None] & d_mask[None, :], HALF)
    slot = tl.load(slots + token).to(tl.int64)
    if slot >= 0:
        block = slot // BLOCK_SIZE
        within = slot % BLOCK_SIZE
        offs_hk = tl.arange(0, BLOCK_HK)
        kv_mask = (offs_hk < NUM_KV_HEADS)[:, None] & d_mask[None, :]
        k_lo = K + token * stride_kt + offs_hk[:, None] * stride_kh + offs_d[None, :]
        k_dst = (K_cache + block * stride_kb + within * stride_ks + offs_hk[:, None] * stride_kh_c
                 + offs_d[None, :])
        v_lo = V + token * stride_vt + offs_hk[:, None] * stride_vh + offs_d[None, :]
        v_dst = (V_cache + block * stride_vb + within * stride_vs + offs_hk[:, None] * stride_vh_c
                 + offs_d[None, :])
        if KV_QUANT:
            h_mask = offs_hk < NUM_KV_HEADS
            scale_offs = block * stride_sb + within * stride_ss + offs_hk
            k_rot_lo, k_rot_hi = _rotated(k_lo, c, s, kv_mask, HALF)
            _store_quantized_halves(k_rot_lo, k_rot_hi, k_dst, K_scale + scale_offs, kv_mask,
                                    h_mask, HALF, QMAX, IS_INT8)
            _store_quantized_halves(tl.load(v_lo, mask=kv_mask, other=0.0),
                                    tl.load(v_lo + HALF, mask=kv_mask, other=0.0), v_dst,
                                    V_scale + scale_offs, kv_mask, h_mask, HALF, QMAX, IS_INT8)
        else:
            lo, hi = _rotated(k_lo, c, s, kv_mask, HALF)
            tl.store(k_dst, lo, mask=kv_mask)
            tl.store(k_dst + HALF, hi, mask=kv_mask)
            if ROTATE_K:
                tl.store(k_lo, lo, mask=kv_mask)
                tl.store(k_lo + HALF, hi, mask=kv_mask)
            tl.store(v_dst, tl.load(v_lo, mask=kv_mask), mask=kv_mask)
            tl.store(v_dst + HALF, tl.load(v_lo + HALF, mask=kv_mask), mask=kv_mask)


def _check_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"expected q [T, Hq, D], k [T, Hk, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    head_dim = q.shape[2]
    if head_dim % 2:
        raise ValueError(f"rotary needs an even head dimension, got {head_dim}")
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != head_dim:
        raise ValueError(f"cos/sin must be [max_position, {head_dim}]; got {tuple(cos.shape)}")
    if q.stride(2) != 1 or k.stride(2) != 1 or cos.stride(1) != 1 or sin.stride() != cos.stride():
        raise ValueError("rotary needs the head dimension contiguous")
    if positions.shape != (q.shape[0],):
        raise ValueError(f"positions must be [{q.shape[0]}], got {tuple(positions.shape)}")
    if q.dtype != k.dtype or cos.dtype != q.dtype:
        raise ValueError(f"dtypes disagree: q {q.dtype}, k {k.dtype}, cos {cos.dtype}")


def _head_blocks(q: torch.Tensor, k: torch.Tensor) -> dict:
    return dict(BLOCK_HQ=triton.next_power_of_2(q.shape[1]),
                BLOCK_HK=triton.next_power_of_2(k.shape[1]),
                BLOCK_HALF=triton.next_power_of_2(q.shape[2] // 2))


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q [T, Hq, D] and k [T, Hk, D] in place; cos/sin [max_position, D] in q's dtype.
    Positions past the table are clamped to its last row (the layer sizes the table to the
    model's maximum position)."""
    _check_rotary(q, k, positions, cos, sin)
    if q.shape[0]:
        _rotary_kernel[(q.shape[0],)](
            q, k, positions, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            cos.stride(0), cos.shape[0],
            NUM_Q_HEADS=q.shape[1], NUM_K_HEADS=k.shape[1], HALF=q.shape[2] // 2,
            **_head_blocks(q, k), num_warps=4, **pdl.LAUNCH)
    return q, k


def rotary_store_kv_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, k_scale: torch.Tensor | None = None,
                     v_scale: torch.Tensor | None = None, rotate_k: bool = False) -> torch.Tensor:
    """Rotates q [T, Hq, D] in place and writes rotated k and v [T, Hkv, D] into the caches
    [num_blocks, block_size, Hkv, D] at flat slots (block * block_size + offset); returns q.

    k itself is left unrotated (that write is the round trip this kernel saves), unless
    `rotate_k` (unquantized caches): then the rows that have a slot are rotated in place too
    (rows without one keep theirs), for a prefill that reads its own keys from k
    (flash_prefill.py). Rows with a
    negative slot store nothing (padded CUDA-graph rows); their q is still rotated, harmlessly.
    Positions are clamped to the table as in `apply_rotary_`. Graph-safe: no host syncs, no
    allocations. With `k_scale`/`v_scale` the caches are int8 / fp8 and each rotated k and each
    v head is quantized on the way in, its scale stored beside it (kv_quant.py)."""
    quantized = check_new_kv(q, k, v, k_cache, v_cache, positions, slot_mapping, cos, sin,
                             k_scale, v_scale)
    if rotate_k and quantized:
        raise ValueError("rotate_k is for unquantized caches: a quantized cache's prefill reads "
                         "its keys from the cache")
    if q.shape[0]:
        _rotary_store_kv_kernel[(q.shape[0],)](
            q, k, v, k_cache, v_cache, positions, slot_mapping, cos, sin,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            cos.stride(0), cos.shape[0],
            *scale_args(k_cache, k_scale, v_scale),
            NUM_Q_HEADS=q.shape[1], NUM_KV_HEADS=k.shape[1], HALF=q.shape[2] // 2,
            BLOCK_SIZE=k_cache.shape[1], **_head_blocks(q, k), **quant_meta(k_cache),
            ROTATE_K=rotate_k, num_warps=4, **pdl.LAUNCH)
    return q


def check_new_kv(q, k, v, k_cache, v_cache, positions, slot_mapping, cos, sin, k_scale=None,
                 v_scale=None) -> bool:
    """Checks a step's q, k, v and where they go (`rotary_store_kv_`'s arguments, and
    paged_attention.decode's `new_kv`); returns whether the caches are quantized."""
    _check_rotary(q, k, positions, cos, sin)
    if v.shape != k.shape or k_cache.shape != v_cache.shape or k_cache.dim() != 4:
        raise ValueError(f"expected v like k {tuple(k.shape)} and equal caches [N, bs, Hkv, D]; "
                         f"got v {tuple(v.shape)}, caches {tuple(k_cache.shape)}, "
                         f"{tuple(v_cache.shape)}")
    if k_cache.shape[2:] != k.shape[1:] or slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"k {tuple(k.shape)} does not fit cache {tuple(k_cache.shape)} or "
                         f"slot_mapping {tuple(slot_mapping.shape)}")
    if v.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("the head dimension of v and the caches must be contiguous")
    quantized = check_kv_scales(k_cache, v_cache, k_scale, v_scale)
    if v.dtype != q.dtype or (not quantized and k_cache.dtype != q.dtype):
        raise ValueError(f"dtypes disagree: q {q.dtype}, v {v.dtype}, caches "
                         f"{k_cache.dtype}/{v_cache.dtype}")
    return quantized


def rotary_reference(q, k, positions, cos, sin):
    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    c, s = cos[positions][:, None, :], sin[positions][:, None, :]
    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def rotary_store_kv_reference(q, k, v, k_cache, v_cache, positions, slot_mapping, cos, sin,
                              k_scale=None, v_scale=None):
    """Returns rotated q; writes rotated k and v (quantized, with their scales, when the scales
    are given) into the caches at the non-negative slots."""
    positions = positions.clamp(0, cos.shape[0] - 1)
    q, k = rotary_reference(q, k, positions, cos, sin)
    keep = slot_mapping >= 0
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    for x, cache, scales in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        rows = x[keep]
        if scales is not None:
            rows, row_scales = quantize_kv_reference(rows, cache.dtype)
            scales.view(num_slots, -1)[slot_mapping[keep]] = row_scales
        cache.view(num_slots, *cache.shape[2:])[slot_mapping[keep]] = rows
    return q
