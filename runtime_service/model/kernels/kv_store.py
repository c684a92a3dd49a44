"""Writing a step's new keys and values into the paged KV caches, in Triton.

`store_kv` writes k and v [T, Hkv, D] at their flat slots (negative slots skipped, which is how
padded CUDA-graph rows stay harmless). Into an int8 / fp8 cache each (token, head) is quantized
on the way in, its scale stored beside it by kv_quant.py's contract; `store_quantized_heads` is
that quantization, shared with rotary.rotary_store_kv_ so that both stores write the same bits.
kv_read.py is the reading half. `store_kv_reference` is the plain-torch twin the tests compare
against.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import jit_keys, pdl
from runtime_service.model.kernels.kv_quant import (check_kv_scales, quant_meta,
                                                    quantize_kv_reference, scale_args)

_ROUNDER = tl.constexpr(12582912.0)     # 1.5 * 2^23


@triton.jit
def kv_scale(amax, QMAX: tl.constexpr):
    """Per-head scale from the head's amax (kv_quant.py's contract, IEEE division)."""
    return tl.maximum(tl.math.div_rn(amax, QMAX), 1e-8)


@jit_keys.helper
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


@jit_keys.helper
@triton.jit
def store_quantized_heads(x, Dst, Scale_dst, mask, h_mask, QMAX: tl.constexpr,
                          IS_INT8: tl.constexpr):
    """Quantizes x [H, D] per head and stores it at `Dst` [H, D] pointers, the scales at
    `Scale_dst` [H] pointers."""
    xf = tl.where(mask, x.to(tl.float32), 0.0)
    scale = kv_scale(tl.max(tl.abs(xf), axis=1), QMAX)
    tl.store(Dst, kv_quantize(xf, scale, IS_INT8).to(Dst.dtype.element_ty), mask=mask)
    tl.store(Scale_dst, scale, mask=h_mask)


@triton.jit
def _store_kv_kernel(
    K, V, K_cache, V_cache, slots,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kb, stride_ks, stride_kh_c, stride_vb, stride_vs, stride_vh_c,
    K_scale, V_scale, stride_sb, stride_ss,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, KV_QUANT: tl.constexpr,
    QMAX: tl.constexpr, IS_INT8: tl.constexpr,
):
    pdl.await_previous_kernel()
    token = tl.program_id(0)
    slot = tl.load(slots + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    within = slot % BLOCK_SIZE
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h < NUM_KV_HEADS)[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(K + token * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(V + token * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    if KV_QUANT:
        h_mask = offs_h < NUM_KV_HEADS
        scale_offs = block * stride_sb + within * stride_ss + offs_h
        store_quantized_heads(k, K_cache + block * stride_kb + within * stride_ks
                              + offs_h[:, None] * stride_kh_c + offs_d[None, :],
                              K_scale + scale_offs, mask, h_mask, QMAX, IS_INT8)
        store_quantized_heads(v, V_cache + block * stride_vb + within * stride_vs
                              + offs_h[:, None] * stride_vh_c + offs_d[None, :],
                              V_scale + scale_offs, mask, h_mask, QMAX, IS_INT8)
        return
    tl.store(K_cache + block * stride_kb + within * stride_ks + offs_h[:, None] * stride_kh_c
             + offs_d[None, :], k, mask=mask)
    tl.store(V_cache + block * stride_vb + within * stride_vs + offs_h[:, None] * stride_vh_c
             + offs_d[None, :], v, mask=mask)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
             v_scale: torch.Tensor | None = None) -> None:
    """k, v [T, Hkv, D] into the caches at flat slots (block * block_size + offset); < 0 skips.
    With `k_scale`/`v_scale` the caches are int8 / fp8: each (token, head) is quantized on the
    way in and its scale stored beside it (kv_quant.py)."""
    check_kv_scales(k_cache, v_cache, k_scale, v_scale)
    if k.shape != v.shape or k.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"expected k, v [T, Hkv, D] and equal caches; got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, caches {tuple(k_cache.shape)}")
    if k.shape[1:] != k_cache.shape[2:] or slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(f"k {tuple(k.shape)} does not fit cache {tuple(k_cache.shape)} or "
                         f"slot_mapping {tuple(slot_mapping.shape)}")
    if k.stride(2) != 1 or v.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("the head dimension of k, v and the caches must be contiguous")
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        *scale_args(k_cache, k_scale, v_scale),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=k_cache.shape[1], **quant_meta(k_cache), num_warps=4, **pdl.LAUNCH,
    )


def store_kv_reference(k, v, k_cache, v_cache, slot_mapping, k_scale=None, v_scale=None):
    keep = slot_mapping >= 0
    num_blocks, block_size = k_cache.shape[:2]
    for x, cache, scales in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        rows = x[keep]
        if scales is not None:
            rows, row_scales = quantize_kv_reference(rows, cache.dtype)
            scales.view(num_blocks * block_size, -1)[slot_mapping[keep]] = row_scales
        cache.view(num_blocks * block_size, *cache.shape[2:])[slot_mapping[keep]] = rows
