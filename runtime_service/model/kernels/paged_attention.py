"""Paged attention over the block table: variable-length causal prefill and split-K decode.

Layouts (the model runner's): q [T, Hq, D] flat over the step's tokens; caches
[num_blocks, block_size, Hkv, D]; sequence i owns query rows query_start[i]:query_start[i+1] and
has seq_lens[i] tokens of context after this step, the last q_len of which are its queries (so a
later prefill chunk sees its earlier chunks and prefix-cache hits as context). GQA maps query head
h to kv head h // (Hq // Hkv).

- `prefill`: one program per (query tile, sequence, query head); online softmax over key tiles
  gathered through the block table, causal at token granularity. Decode rows are valid input.
- `decode`: one query per sequence. Split-K: program (sequence, kv head, split) covers one slice of
  the context for all query heads of its group (the group's rows are one tl.dot tile), writing a
  partial output and its log-sum-exp. The slice length is computed on the device from seq_lens,
  so the launch is graph-safe: the grid depends only on the batch size. The splits are merged in
  the same launch (flash-decoding with an arrival counter, see `_decode_kernel`), or, with
  `fused_combine=False`, by a second launch (`_combine_kernel`); both merge through
  `_merge_splits`, so the two give the same bits.

Launch shapes and their defaults are attention_configs.py's; the products over an int8 / fp8
cache are kv_read.py's; writing the step's new k and v into the caches is kv_store.py's. Both
functions have a plain-torch twin (`*_reference`) that the tests compare against.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import arrival_counts, pdl
from runtime_service.model.kernels.attention_configs import (DecodeConfig, PrefillConfig,
                                                             default_decode_config,
                                                             default_prefill_config,
                                                             multiprocessor_count,
                                                             shared_bytes_per_block)
from runtime_service.model.kernels.kv_quant import (check_kv_scales, dequantize_kv_reference,
                                                    scale_args)
from runtime_service.model.kernels.kv_read import fp16_query, quantized_scores, quantized_values

_LOG2E = 1.4426950408889634


@triton.jit
def _prefill_tile(q, q_max, m_i, l_i, acc, start_n, end_n, offs_m, context, table, offs_d,
                  d_mask, K_cache, V_cache, K_scale, V_scale, kv_head, scale_log2,
                  stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                  stride_sb, stride_ss, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                  PRECISION: tl.constexpr, KV_QUANT: tl.constexpr, FP8_AS_FP16: tl.constexpr,
                  MASKED: tl.constexpr):
    """One key tile of the online softmax. Unmasked (MASKED False) when every key of the tile
    is in the context of every query row of the program: no bounds or causal mask to compute.
    With FP8_AS_FP16, `q` is the fp16 query of `kv_read.fp16_query` and `q_max` its row scales."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_mask = offs_n < end_n
    block = tl.load(table + offs_n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
    within = offs_n % BLOCK_SIZE
    k_ptrs = (K_cache + block[:, None] * stride_kb + within[:, None] * stride_ks
              + kv_head * stride_kh + offs_d[None, :])
    v_ptrs = (V_cache + block[:, None] * stride_vb + within[:, None] * stride_vs
              + kv_head * stride_vh + offs_d[None, :])
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    if KV_QUANT:
        scale_offs = block * stride_sb + within * stride_ss + kv_head
        k_scale = tl.load(K_scale + scale_offs, mask=n_mask, other=0.0)
        s = quantized_scores(q, q_max, k, k_scale, scale_log2, PRECISION, FP8_AS_FP16)
    else:
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    if MASKED:
        causal = (offs_n[None, :] <= context + offs_m[:, None]) & n_mask[None, :]
        s = tl.where(causal, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    if KV_QUANT:
        v_scale = tl.load(V_scale + scale_offs, mask=n_mask, other=0.0)
        pv = quantized_values(p, v, v_scale, q.dtype, PRECISION, FP8_AS_FP16)
    else:
        pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc * alpha[:, None] + pv


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
    for start_n in range(0, full_end, BLOCK_N):
        m_i, l_i, acc = _prefill_tile(
            q, q_max, m_i, l_i, acc, start_n, end_n, offs_m, context, table, offs_d, d_mask,
            K_cache, V_cache, K_scale, V_scale, kv_head, scale_log2,
            stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_sb,
            stride_ss, BLOCK_SIZE, BLOCK_N, PRECISION, KV_QUANT, FP8_AS_FP16, False)
    for start_n in range(full_end, end_n, BLOCK_N):
        m_i, l_i, acc = _prefill_tile(
            q, q_max, m_i, l_i, acc, start_n, end_n, offs_m, context, table, offs_d, d_mask,
            K_cache, V_cache, K_scale, V_scale, kv_head, scale_log2,
            stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_sb,
            stride_ss, BLOCK_SIZE, BLOCK_N, PRECISION, KV_QUANT, FP8_AS_FP16, True)
    out = acc / l_i[:, None]
    o_ptrs = Out + (q_start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


@triton.jit
def _split_span(seq_len, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr,
                MIN_SPLIT_KEYS: tl.constexpr):
    """Keys per split (whole key tiles, at least MIN_SPLIT_KEYS) and how many splits get any
    (at least one, so a row is always written). The splits past those return at once: they
    write no partial and the merge does not wait for them."""
    per_split = tl.maximum(tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N,
                           MIN_SPLIT_KEYS)
    return per_split, tl.maximum(tl.cdiv(seq_len, per_split), 1)


@triton.jit(do_not_specialize=["fused_combine"])
def _decode_kernel(
    Q, K_cache, V_cache, PartialOut, PartialLse, Out, arrival_counts, block_tables, seq_lens,
    scale_log2, fused_combine,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    stride_pt, stride_ph, stride_ps, stride_lt, stride_lh, stride_ot, stride_oh,
    K_scale, V_scale, stride_sb, stride_ss,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, MERGE_G: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, MIN_SPLIT_KEYS: tl.constexpr,
    PRECISION: tl.constexpr, KV_QUANT: tl.constexpr, FP8_AS_FP16: tl.constexpr,
):
    """Only the splits that get keys (`_split_span`) run; when that is one, it writes the
    output itself, with the bits a merge of one partial gives (the weight is exp2(0) = 1).

    With `fused_combine` set, the last working split to finish for its (sequence, kv head)
    merges the partials. Ordering: every thread's partial stores precede a CTA barrier, after
    which one thread does the acq_rel (gpu scope) add on the arrival count; the adds form one
    release sequence, so the program that reads `working - 1` has acquired every other
    program's stores, and Triton's broadcast of the add's result (shared memory, then a barrier)
    orders its threads' partial loads after that acquire. The merger resets the count to 0 for
    the next launch (no other program touches it until then). `fused_combine` is a runtime flag
    (not specialised) so both paths run one binary: the partials are the same bits."""
    pdl.await_previous_kernel()
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + seq)
    per_split, working = _split_span(seq_len, NUM_SPLITS, BLOCK_N, MIN_SPLIT_KEYS)
    if split >= working:
        return
    start = split * per_split
    end = tl.minimum(seq_len, start + per_split)
    offs_g = tl.arange(0, BLOCK_G)
    g_mask = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    q_max = tl.full([BLOCK_G], 1.0, dtype=tl.float32)
    if FP8_AS_FP16:
        q, q_max = fp16_query(q)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    table = block_tables + seq * stride_bt
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        block = tl.load(table + offs_n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        within = offs_n % BLOCK_SIZE
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(K_cache + block[:, None] * stride_kb + within[:, None] * stride_ks
                    + kv_head * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        if KV_QUANT:
            scale_offs = block * stride_sb + within * stride_ss + kv_head
            k_scale = tl.load(K_scale + scale_offs, mask=n_mask, other=0.0)
            s = quantized_scores(q, q_max, k, k_scale, scale_log2, PRECISION, FP8_AS_FP16)
        else:
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V_cache + block[:, None] * stride_vb + within[:, None] * stride_vs
                    + kv_head * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        if KV_QUANT:
            v_scale = tl.load(V_scale + scale_offs, mask=n_mask, other=0.0)
            pv = quantized_values(p, v, v_scale, Q.dtype.element_ty, PRECISION, FP8_AS_FP16)
        else:
            pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    has_work = l_i > 0
    out = acc / tl.where(has_work, l_i, 1.0)[:, None]
    lse = tl.where(has_work, m_i + tl.log2(tl.where(has_work, l_i, 1.0)), float("-inf"))
    gd_mask = g_mask[:, None] & d_mask[None, :]
    if working == 1:
        tl.store(Out + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(Out.dtype.element_ty), mask=gd_mask)
        return
    tl.store(PartialOut + seq * stride_pt + heads[:, None] * stride_ph + split * stride_ps
             + offs_d[None, :], out, mask=gd_mask)
    tl.store(PartialLse + seq * stride_lt + heads * stride_lh + split, lse, mask=g_mask)
    if fused_combine != 0:
        tl.debug_barrier()          # every thread's partial stores come before the release
        counter = arrival_counts + seq * tl.num_programs(1) + kv_head
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == working - 1:
            _merge_splits(PartialOut, PartialLse, Out, seq, kv_head, working,
                          stride_pt, stride_ph, stride_ps, stride_lt, stride_lh,
                          stride_ot, stride_oh, GROUP, MERGE_G, HEAD_DIM, BLOCK_D, NUM_SPLITS)
            tl.store(counter, 0)


@triton.jit
def _merge_splits(
    PartialOut, PartialLse, Out, seq, kv_head, working,
    stride_pt, stride_ph, stride_ps, stride_lt, stride_lh, stride_ot, stride_oh,
    GROUP: tl.constexpr, MERGE_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """Out[seq, heads of kv_head] = the lse-weighted mean of the working splits' partials. The
    sums run split by split in order, element by element, with one weight per head: the bits
    do not depend on a tile layout (a tree reduction's order would), so the fused and the
    two-launch paths agree. The group's heads are one [MERGE_G, D] tile, so every split's loads
    for all of them go out together: one L2 round trip for the maxima and one for the sums,
    where a head at a time took two each (its store ends the loads' reordering). The loads
    bypass L1 (.cg): the partials were written by other programs."""
    offs_g = tl.arange(0, MERGE_G)
    g_mask = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    offs_d = tl.arange(0, BLOCK_D)
    gd_mask = g_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    lse_rows = PartialLse + seq * stride_lt + heads * stride_lh
    part_rows = PartialOut + seq * stride_pt + heads[:, None] * stride_ph + offs_d[None, :]
    m = tl.load(lse_rows, mask=g_mask, other=0.0, cache_modifier=".cg")
    for s in tl.static_range(1, NUM_SPLITS):
        m = tl.maximum(m, tl.load(lse_rows + s, mask=g_mask & (s < working),
                                  other=float("-inf"), cache_modifier=".cg"))
    total = tl.where(g_mask, 0.0, 1.0)      # a padding row divides 0 by 1, not 0 by 0
    acc = tl.zeros([MERGE_G, BLOCK_D], dtype=tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        live = s < working
        weight = tl.exp2(tl.load(lse_rows + s, mask=g_mask & live, other=float("-inf"),
                                 cache_modifier=".cg") - m)
        part = tl.load(part_rows + s * stride_ps, mask=gd_mask & live, other=0.0,
                       cache_modifier=".cg")
        total = total + weight
        acc = acc + part * weight[:, None]
    out = acc / total[:, None]
    tl.store(Out + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=gd_mask)


@triton.jit
def _combine_kernel(
    PartialOut, PartialLse, Out, seq_lens,
    stride_pt, stride_ph, stride_ps, stride_lt, stride_lh, stride_ot, stride_oh,
    GROUP: tl.constexpr, MERGE_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, MIN_SPLIT_KEYS: tl.constexpr,
):
    """The two-launch merge, one program per (sequence, kv head); a row that one split wrote
    whole has nothing to merge."""
    pdl.await_previous_kernel()
    seq = tl.program_id(0)
    _, working = _split_span(tl.load(seq_lens + seq), NUM_SPLITS, BLOCK_N, MIN_SPLIT_KEYS)
    if working > 1:
        _merge_splits(PartialOut, PartialLse, Out, seq, tl.program_id(1), working,
                      stride_pt, stride_ph, stride_ps, stride_lt, stride_lh, stride_ot,
                      stride_oh, GROUP, MERGE_G, HEAD_DIM, BLOCK_D, NUM_SPLITS)


# ---- launchers ---------------------------------------------------------------------------------

def _precision(q: torch.Tensor) -> str | None:
    """float32 inputs get exact float32 products (Triton's default would be tf32)."""
    return "ieee" if q.dtype == torch.float32 else None


def _fp8_as_fp16(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the products over an fp8 cache run in fp16 (`kv_read.fp16_query`): a 16-bit query
    over fp8 codes. int8 codes keep the query's dtype: they become bf16 by bit tricks, and fp16
    through a slow I2F (offline SASS: 128 I2F a tile)."""
    return k_cache.dtype == torch.float8_e4m3fn and q.dtype in (torch.bfloat16, torch.float16)


def _check_common(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
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


def prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            block_tables: torch.Tensor, query_start: torch.Tensor, seq_lens: torch.Tensor,
            max_query_len: int, scale: float, out: torch.Tensor | None = None,
            k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
            config: PrefillConfig | None = None) -> torch.Tensor:
    """Causal attention of every query row over its sequence's cached context -> [T, Hq, D].

    With `k_scale`/`v_scale` [num_blocks, block_size, Hkv] the caches are int8 or fp8 and read
    as q * scale (kv_quant.py); the products still run in q's dtype. `config` overrides
    `default_prefill_config`."""
    num_heads, num_kv_heads, head_dim, block_size = _check_common(q, k_cache, v_cache,
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
        q, k_cache, v_cache, out, block_tables, query_start, seq_lens, scale * _LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        *scale_args(k_cache, k_scale, v_scale),
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=block_size, HEAD_DIM=head_dim,
        BLOCK_D=block_d, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        PRECISION=_precision(q), KV_QUANT=k_scale is not None,
        FP8_AS_FP16=_fp8_as_fp16(q, k_cache), HEAVY_FIRST=config.heavy_first,
        num_warps=config.num_warps, num_stages=config.num_stages, **pdl.LAUNCH,
    )
    return out


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
           num_splits: int, out: torch.Tensor | None = None,
           fused_combine: bool = True, config: DecodeConfig | None = None,
           k_scale: torch.Tensor | None = None,
           v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """One query row per sequence (q [B, Hq, D]) over its whole cached context -> [B, Hq, D].

    `fused_combine=False` merges the splits in a second launch instead of in the decode launch;
    the result has the same bits (the tests compare the two). `config` overrides
    `default_decode_config`. `k_scale`/`v_scale`: int8 / fp8 caches, as in `prefill`."""
    num_heads, num_kv_heads, head_dim, block_size = _check_common(q, k_cache, v_cache,
                                                                  block_tables, k_scale, v_scale)
    num_seqs = q.shape[0]
    if seq_lens.shape[0] != num_seqs or block_tables.shape[0] < num_seqs:
        raise ValueError(f"decode needs one seq_len and block-table row per query row; got "
                         f"{num_seqs} rows, {seq_lens.shape[0]} seq_lens, "
                         f"{block_tables.shape[0]} table rows")
    if num_splits < 1 or num_splits & (num_splits - 1):
        raise ValueError(f"num_splits must be a power of two, got {num_splits}")
    out = torch.empty_like(q) if out is None else out
    if out.shape != q.shape or out.stride(2) != 1:
        raise ValueError(f"out must be like q {tuple(q.shape)} with a contiguous head dimension; "
                         f"got {tuple(out.shape)}")
    if num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    config = config or default_decode_config(group, head_dim, num_seqs * num_kv_heads,
                                             multiprocessor_count(q.device))
    block_d = triton.next_power_of_2(head_dim)
    merge_g = triton.next_power_of_2(group)
    min_split_keys = triton.cdiv(config.min_split_keys, config.block_n) * config.block_n
    partial = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32,
                          device=q.device)
    lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    # Both paths pass the counts (unused by the two-launch path) so they run one binary.
    counts = arrival_counts.counts_for(q.device, num_seqs * num_kv_heads)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, partial, lse, out, counts, block_tables, seq_lens, scale * _LOG2E,
        int(fused_combine),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), *scale_args(k_cache, k_scale, v_scale),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), MERGE_G=merge_g,
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=config.block_n,
        NUM_SPLITS=num_splits, MIN_SPLIT_KEYS=min_split_keys, PRECISION=_precision(q),
        KV_QUANT=k_scale is not None, FP8_AS_FP16=_fp8_as_fp16(q, k_cache),
        num_warps=config.num_warps, num_stages=config.num_stages, **pdl.LAUNCH,
    )
    if not fused_combine:
        _combine_kernel[(num_seqs, num_kv_heads)](
            partial, lse, out, seq_lens,
            partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0),
            lse.stride(1), out.stride(0), out.stride(1),
            GROUP=group, MERGE_G=merge_g, HEAD_DIM=head_dim, BLOCK_D=block_d,
            BLOCK_N=config.block_n, NUM_SPLITS=num_splits, MIN_SPLIT_KEYS=min_split_keys,
            num_warps=4, **pdl.LAUNCH,
        )
    return out


# ---- plain-torch references --------------------------------------------------------------------

def _gather_context(cache: torch.Tensor, table_row: torch.Tensor, seq_len: int) -> torch.Tensor:
    block_size = cache.shape[1]
    blocks = table_row[:-(-seq_len // block_size)].long()
    return cache[blocks].flatten(0, 1)[:seq_len]


def prefill_reference(q, k_cache, v_cache, block_tables, query_start, seq_lens, scale,
                      k_scale=None, v_scale=None):
    """Float32 causal attention per sequence over the gathered (dequantized) context."""
    k_cache = dequantize_kv_reference(k_cache, k_scale)
    v_cache = dequantize_kv_reference(v_cache, v_scale)
    out = torch.empty_like(q)
    group = q.shape[1] // k_cache.shape[2]
    starts = query_start.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        rows = slice(starts[i], starts[i + 1])
        q_len = starts[i + 1] - starts[i]
        keys = _gather_context(k_cache, block_tables[i], seq_len).float()
        values = _gather_context(v_cache, block_tables[i], seq_len).float()
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1)
        values = values.repeat_interleave(group, dim=1).transpose(0, 1)
        scores = q[rows].float().transpose(0, 1) @ keys.transpose(1, 2) * scale
        mask = torch.ones(q_len, seq_len, dtype=torch.bool, device=q.device).tril(seq_len - q_len)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        out[rows] = (probs @ values).transpose(0, 1).to(q.dtype)
    return out


def decode_reference(q, k_cache, v_cache, block_tables, seq_lens, scale, k_scale=None,
                     v_scale=None):
    num_seqs = q.shape[0]
    query_start = torch.arange(num_seqs + 1, dtype=torch.int32, device=q.device)
    return prefill_reference(q, k_cache, v_cache, block_tables, query_start, seq_lens, scale,
                             k_scale, v_scale)
