"""What the paged attention kernels share (paged_attention.py's prefill, paged_decode.py's
decode, flash_prefill.py): the argument checks, the products' precision, and whether an fp8
cache's products run in fp16."""

from __future__ import annotations

import torch

from runtime_service.model.kernels.kv_quant import check_kv_scales

LOG2E = 1.4426950408889634


def precision(q: torch.Tensor) -> str | None:
    """float32 inputs get exact float32 products (Triton's default would be tf32)."""
    return "ieee" if q.dtype == torch.float32 else None


def fp8_as_fp16(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the products over an fp8 cache run in fp16 (`kv_read.fp16_query`): a 16-bit query
    over fp8 codes. int8 codes keep the query's dtype: they become bf16 by bit tricks, and fp16
    through a slow I2F (offline SASS: 128 I2F a tile)."""
    return k_cache.dtype == torch.float8_e4m3fn and q.dtype in (torch.bfloat16, torch.float16)


def check_common(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  block_tables: torch.Tensor, k_scale=None,
                  v_scale=None) -> tuple[int, int, int, int]:
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"expected q [T, Hq, D] and caches [N, bs, Hkv, D], got q "
                         f"{tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache "
                         f"{tuple(v_cache.shape)}")
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if k_cache.shape[3] != head_dim or num_heads % num_kv_heads:
        raise ValueError(f"head shapes disagree: q {tuple(q.shape)}, cache {tuple(k_cache.shape)}")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("the head dimension of q and of the caches must be contiguous")
    quantized = check_kv_scales(k_cache, v_cache, k_scale, v_scale)
    if (not quantized and q.dtype != k_cache.dtype) or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"dtypes disagree: q {q.dtype}, caches {k_cache.dtype}/{v_cache.dtype}")
    if block_tables.dim() != 2 or block_tables.stride(1) != 1:
        raise ValueError("block_tables must be [B, max_blocks] with contiguous rows")
    return num_heads, num_kv_heads, head_dim, block_size
