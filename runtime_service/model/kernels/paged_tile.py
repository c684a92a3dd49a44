"""One key tile of paged attention's online softmax, shared by paged_attention.py's prefill and
paged_decode.py's decode: where the tile's keys sit in the cache's blocks, the score and value
products (kv_read.py's over an int8 / fp8 cache), and the running maximum, sum and output.
"""

from __future__ import annotations

import triton
import triton.language as tl

from runtime_service.model.kernels import jit_keys
from runtime_service.model.kernels.kv_read import quantized_scores, quantized_values


@jit_keys.helper
@triton.jit
def tile_slots(table, start_n, n_mask, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """(cache block, slot within it) of the tile's BLOCK_N keys from `start_n`, a multiple of
    BLOCK_N. Where tiles and blocks nest (either size divides the other), the slots are a
    pattern fixed at compile time plus one number per tile, which the loop does not work out
    again key by key; otherwise each key's block is divided out. Offline sm_90 SASS of the
    decode loop over a 16-token-block cache: 1,234 instructions a tile against 1,568 (fp8,
    32-key tiles on one warp), 373 against 526 (bf16, 64-key tiles on four warps)."""
    offs = tl.arange(0, BLOCK_N)
    if BLOCK_SIZE % BLOCK_N == 0:
        block = tl.load(table + start_n // BLOCK_SIZE).to(tl.int64)
        return tl.full([BLOCK_N], 0, tl.int64) + block, start_n % BLOCK_SIZE + offs
    elif BLOCK_N % BLOCK_SIZE == 0:
        block = tl.load(table + start_n // BLOCK_SIZE + offs // BLOCK_SIZE, mask=n_mask,
                        other=0).to(tl.int64)
        return block, offs % BLOCK_SIZE
    else:
        keys = start_n + offs
        block = tl.load(table + keys // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        return block, keys % BLOCK_SIZE


@jit_keys.helper
@triton.jit
def attend_tile(q, q_max, m_i, l_i, acc, start_n, end_n, causal_limit, table, k_head, v_head,
                k_scale_head, v_scale_head, offs_d, d_mask, stride_kb, stride_ks, stride_vb,
                stride_vs, stride_sb, stride_ss, scale_log2, BLOCK_N: tl.constexpr,
                BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr, KV_QUANT: tl.constexpr,
                FP8_AS_FP16: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """The new (m_i, l_i, acc) after the BLOCK_N keys from `start_n` (a multiple of BLOCK_N).
    `k_head` ... `v_scale_head` point at the kv head's first key, value and scales. MASKED: the
    tile may run past `end_n`, and with CAUSAL, query row i sees keys up to `causal_limit[i]`.
    An unmasked tile (every key visible to every row: a prefill's tiles before its diagonal)
    computes no mask at all. With FP8_AS_FP16, `q` is the fp16 query of `kv_read.fp16_query`
    and `q_max` its row scales."""
    if MASKED:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end_n
    else:
        n_mask = tl.full([BLOCK_N], 1, tl.int1)
    block, within = tile_slots(table, start_n, n_mask, BLOCK_N, BLOCK_SIZE)
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(k_head + block[:, None] * stride_kb + within[:, None] * stride_ks
                + offs_d[None, :], mask=kv_mask, other=0.0)
    if KV_QUANT:
        scale_offs = block * stride_sb + within * stride_ss
        k_scale = tl.load(k_scale_head + scale_offs, mask=n_mask, other=0.0)
        s = quantized_scores(q, q_max, k, k_scale, scale_log2, PRECISION, FP8_AS_FP16)
    else:
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    if MASKED:
        if CAUSAL:
            s = tl.where((offs_n[None, :] <= causal_limit[:, None]) & n_mask[None, :], s,
                         float("-inf"))
        else:
            s = tl.where(n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_head + block[:, None] * stride_vb + within[:, None] * stride_vs
                + offs_d[None, :], mask=kv_mask, other=0.0)
    if KV_QUANT:
        v_scale = tl.load(v_scale_head + scale_offs, mask=n_mask, other=0.0)
        pv = quantized_values(p, v, v_scale, q.dtype, PRECISION, FP8_AS_FP16)
    else:
        pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc * alpha[:, None] + pv
