"""The reading half of the int8 / fp8 KV cache, in Triton: attention's score and value products
over a tile of 8-bit codes and their per-(token, head) scales (kv_quant.py's contract), shared by
paged_attention.py's prefill and decode kernels and flash_prefill.py. kv_store.py is the
writing half.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fp16_query(q):
    """(fp16 query, per-row scale) for the score products over an fp8 cache under a 16-bit
    query (FP8_AS_FP16): the rows are scaled into [-1, 1] and taken to fp16. fp8 codes become
    fp16 in one instruction per pair, where bf16 took three, one of them a quarter-rate F2F that
    bound the decode loop (offline sm_90 SASS: 1124 instructions a tile, 128 of them F2F,
    against 928 and none; bench/NOTES.md). fp16 also keeps 3 more mantissa bits than bf16, and
    the scaling keeps any row in its range."""
    q32 = q.to(tl.float32)
    q_max = tl.max(tl.abs(q32), 1)
    q_max = tl.where(q_max > 0, q_max, 1.0)
    return (q32 / q_max[:, None]).to(tl.float16), q_max


@triton.jit
def quantized_scores(q, q_max, k, k_scale, scale_log2, PRECISION: tl.constexpr,
                      FP8_AS_FP16: tl.constexpr):
    """q . k for a tile of 8-bit keys, scaled back to log2 units (see `fp16_query`)."""
    if FP8_AS_FP16:
        s = tl.dot(q, tl.trans(k.to(tl.float16)))
        return s * q_max[:, None] * (k_scale * scale_log2)[None, :]
    s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION)
    return s * (k_scale * scale_log2)[None, :]


@triton.jit
def quantized_values(p, v, v_scale, dtype: tl.constexpr, PRECISION: tl.constexpr,
                      FP8_AS_FP16: tl.constexpr):
    """p @ (v * v_scale) for a tile of 8-bit values. In fp16 each value row is scaled by its
    scale over the tile's largest, in [0, 1] (a small scale times a small p would fall below
    fp16's normal range), and the product is scaled back by that largest scale.
    Scaling v rather than p makes Triton take v to fp16 before its shared-memory transpose:
    the MMA then reads v with LDSM.trans, where p * scale left it reading v's fp8 bytes one
    LDS at a time (offline sm_90 SASS of the decode loop: 930 instructions a tile against
    1019; bench/NOTES.md)."""
    if FP8_AS_FP16:
        v_max = tl.max(v_scale, 0)
        v_max = tl.where(v_max > 0, v_max, 1.0)
        values = v.to(tl.float16) * (v_scale / v_max).to(tl.float16)[:, None]
        return tl.dot(p.to(tl.float16), values) * v_max
    return tl.dot((p * v_scale[None, :]).to(dtype), v.to(dtype), input_precision=PRECISION)
