"""Paged attention over the block table: variable-length causal prefill here, split-K decode in
paged_decode.py (re-exported, with its config and the references, so callers import one module).

Layouts (the model runner's): q [T, Hq, D] flat over the step's tokens; caches
[num_blocks, block_size, Hkv, D]; sequence i owns query rows query_start[i]:query_start[i+1] and
has seq_lens[i] tokens of context after this step, the last q_len of which are its queries (so a
later prefill chunk sees its earlier chunks and prefix-cache hits as context). GQA maps query head
h to kv head h // (Hq // Hkv).

- `prefill`: one program per (query tile, sequence, query head); online softmax over key tiles
  gathered through the block table, causal at token granularity. Decode rows are valid input.
- `decode` (paged_decode.py): one query per sequence, the context split over programs whose
  partials are merged in the same launch.

Launch shapes and their defaults are attention_configs.py's; the products over an int8 / fp8
cache are kv_read.py's; writing the step's new k and v into the caches is kv_store.py's (or, in
decode, the decode kernel's own, with rotary: `decode(..., new_kv=...)`). Both functions have a
plain-torch twin (`*_reference`, attention_reference.py) that the tests compare against.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import pdl
from runtime_service.model.kernels.attention_configs import (  # noqa: F401 - re-exported
    DecodeConfig, PrefillConfig, default_prefill_config, shared_bytes_per_block)
from runtime_service.model.kernels.attention_reference import (  # noqa: F401 - re-exported
    decode_reference, prefill_reference)
from runtime_service.model.kernels.kv_quant import scale_args
from runtime_service.model.kernels.kv_read import fp16_query
from runtime_service.model.kernels.paged_common import (  # noqa: F401 - re-exported
    LOG2E, check_common, fp8_as_fp16, precision)
from runtime_service.model.kernels.paged_decode import NewKV, decode  # noqa: F401 - re-exported
from runtime_service.model.kernels.paged_tile import attend_tile


@triton.jit
def _prefill_kernel(
    Q, K_cache, V_cache, Out, block_tables, query_start, seq_lens, scale_log2,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    K_scale, V_scale, stride_sb, stride_ss,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, KV_QUANT: tl.constexpr, FP8_AS_FP16: tl.constexpr,
    HEAVY_FIRST: tl.constexpr,
):
    # A causal tile's work grows with its row: HEAVY_FIRST launches the last tiles first, so the
    # short ones fill the gaps at the end instead of a long one running alone.
    pdl.await_previous_kernel()
    m_block = tl.num_programs(0) - 1 - tl.program_id(0) if HEAVY_FIRST else tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(query_start + seq)
    q_len = tl.load(query_start + seq + 1) - q_start
    if m_block * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens + seq)
    context = seq_len - q_len
    kv_head = head // GROUP

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    m_mask = offs_m < q_len
    q_ptrs = Q + (q_start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    q_max = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    if FP8_AS_FP16:
        q, q_max = fp16_query(q)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    table = block_tables + seq * stride_bt
    end_n = tl.minimum(seq_len, context + (m_block + 1) * BLOCK_M)
    # Keys before the first row's own position are visible to every row of the tile: whole
    # tiles of them skip the masks; the rest (the diagonal, and a partial last tile) keep them.
    full_end = (context + m_block * BLOCK_M + 1) // BLOCK_N * BLOCK_N
    tile_args = (end_n, context + offs_m, table, K_cache + kv_head * stride_kh,
                 V_cache + kv_head * stride_vh, K_scale + kv_head, V_scale + kv_head, offs_d,
                 d_mask, stride_kb, stride_ks, stride_vb, stride_vs, stride_sb, stride_ss,
                 scale_log2)
    for start_n in range(0, full_end, BLOCK_N):
        m_i, l_i, acc = attend_tile(q, q_max, m_i, l_i, acc, start_n, *tile_args, BLOCK_N,
                                    BLOCK_SIZE, PRECISION, KV_QUANT, FP8_AS_FP16, False, True)
    for start_n in range(full_end, end_n, BLOCK_N):
        m_i, l_i, acc = attend_tile(q, q_max, m_i, l_i, acc, start_n, *tile_args, BLOCK_N,
                                    BLOCK_SIZE, PRECISION, KV_QUANT, FP8_AS_FP16, True, True)
    out = acc / l_i[:, None]
    o_ptrs = Out + (q_start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


# ---- launchers ---------------------------------------------------------------------------------

def prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            block_tables: torch.Tensor, query_start: torch.Tensor, seq_lens: torch.Tensor,
            max_query_len: int, scale: float, out: torch.Tensor | None = None,
            k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
            config: PrefillConfig | None = None) -> torch.Tensor:
    """Causal attention of every query row over its sequence's cached context -> [T, Hq, D].

    With `k_scale`/`v_scale` [num_blocks, block_size, Hkv] the caches are int8 or fp8 and read
    as q * scale (kv_quant.py); the products still run in q's dtype. `config` overrides
    `default_prefill_config`."""
    num_heads, num_kv_heads, head_dim, block_size = check_common(q, k_cache, v_cache,
                                                                  block_tables, k_scale, v_scale)
    num_seqs = seq_lens.shape[0]
    if query_start.shape[0] != num_seqs + 1 or block_tables.shape[0] < num_seqs:
        raise ValueError(f"query_start needs B + 1 = {num_seqs + 1} entries and block_tables B "
                         f"rows; got {query_start.shape[0]} and {block_tables.shape[0]}")
    out = torch.empty_like(q) if out is None else out
    if num_seqs == 0 or max_query_len == 0:
        return out
    config = config or default_prefill_config(head_dim, max_query_len,
                                              shared_bytes_per_block(q.device),
                                              q.element_size())
    block_d = triton.next_power_of_2(head_dim)
    grid = (triton.cdiv(max_query_len, config.block_m), num_seqs, num_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, query_start, seq_lens, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        *scale_args(k_cache, k_scale, v_scale),
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=block_size, HEAD_DIM=head_dim,
        BLOCK_D=block_d, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        PRECISION=precision(q), KV_QUANT=k_scale is not None,
        FP8_AS_FP16=fp8_as_fp16(q, k_cache), HEAVY_FIRST=config.heavy_first,
        num_warps=config.num_warps, num_stages=config.num_stages, **pdl.LAUNCH,
    )
    return out
