"""INT8 / FP8 KV cache: one float32 scale per (token, kv head), the quantization both store
kernels (kv_store.store_kv, rotary.rotary_store_kv_) share, and its plain-torch twin.

Plain torch only (CPU-safe); the Triton side of the stores is kv_store.py. Contract
(docs/ARCHITECTURE.md): caches [num_blocks, block_size, Hkv, D] of int8 or
float8_e4m3fn, each with a float32 scale tensor [num_blocks, block_size, Hkv];
scale = max(amax|x| / QMAX, 1e-8) with QMAX 127 (int8) or 448 (fp8); int8 q = round-half-even
(x / scale) clamped to [-128, 127], fp8 q = e4m3(x / scale); x = q * scale on read. The divisions
are IEEE (`div_rn` in the kernels), as torch's, so kernel and reference agree bit for bit.
"""

from __future__ import annotations

import torch

KV_CACHE_DTYPES = (torch.int8, torch.float8_e4m3fn)
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def qmax(dtype: torch.dtype) -> float:
    return _QMAX[dtype]


def quantize_kv_reference(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """x [..., D] -> (q [..., D] of `dtype`, float32 scales [...])."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    # A tensor divisor: torch divides by a Python scalar as a multiply by its reciprocal on
    # CUDA, which can differ from amax / QMAX (what the kernels compute) in the last bit.
    scales = (amax / torch.full_like(amax, _QMAX[dtype])).clamp_min(1e-8)
    scaled = xf / scales[..., None]
    if dtype == torch.int8:
        return scaled.round().clamp(-128, 127).to(torch.int8), scales
    return scaled.to(dtype), scales


def dequantize_kv_reference(cache: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """The float32 values of a cache (scales None: the cache is already in a float dtype)."""
    if scales is None:
        return cache.float()
    return cache.float() * scales[..., None]


def check_kv_scales(k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale, v_scale) -> bool:
    """Validates the scale tensors against their caches; True when the caches are quantized."""
    if (k_scale is None) != (v_scale is None):
        raise ValueError("pass both k_scale and v_scale, or neither")
    if k_scale is None:
        if k_cache.dtype in KV_CACHE_DTYPES:
            raise ValueError(f"a {k_cache.dtype} KV cache needs k_scale and v_scale")
        return False
    if k_cache.dtype not in KV_CACHE_DTYPES or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"k_scale/v_scale need int8 or float8_e4m3fn caches, got "
                         f"{k_cache.dtype}/{v_cache.dtype}")
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if (scale.shape != k_cache.shape[:3] or scale.dtype != torch.float32
                or scale.stride(2) != 1 or scale.device != k_cache.device):
            raise ValueError(f"{name} must be float32 {tuple(k_cache.shape[:3])} with a "
                             f"contiguous last dimension on {k_cache.device}; got "
                             f"{scale.dtype} {tuple(scale.shape)}")
    if k_scale.stride() != v_scale.stride():
        raise ValueError("k_scale and v_scale must share strides")
    return True


def quant_meta(cache: torch.Tensor) -> dict:
    """The store kernels' constexprs for a cache dtype."""
    quantized = cache.dtype in KV_CACHE_DTYPES
    return dict(KV_QUANT=quantized, QMAX=_QMAX.get(cache.dtype, 1.0),
                IS_INT8=cache.dtype == torch.int8)


def scale_args(k_cache: torch.Tensor, k_scale, v_scale) -> tuple:
    """(K_scale, V_scale, stride_sb, stride_ss) for a launch; an unquantized cache passes its
    own pointer in their place (the KV_QUANT=False kernels never read it)."""
    if k_scale is None:
        return k_cache, k_cache, 0, 0
    return k_scale, v_scale, k_scale.stride(0), k_scale.stride(1)
