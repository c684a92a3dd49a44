"""Split-K paged decode attention: one query row per sequence over its whole cached context.

Program (sequence, kv head, split) covers one slice of the context for all query heads of its
group (the group's rows are one tl.dot tile), writing a partial output and its log-sum-exp. The
slice length is computed on the device from seq_lens, so the launch is graph-safe: the grid
depends only on the batch size. Only the splits that get keys run, and a row one split covers
is written by it directly. Otherwise the splits are merged in the same launch (flash-decoding
with an arrival counter, see `_decode_kernel`), or, with `fused_combine=False`, by a second
launch (`_combine_kernel`); both merge through `_merge_splits`, so the two give the same bits.
With `new_kv` the launch also does the step's rotary and cache write (`NewKV`).

Launch shapes and their defaults are attention_configs.py's; the products over an int8 / fp8
cache are kv_read.py's; the plain-torch twin is attention_reference.py's `decode_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import arrival_counts, jit_keys, pdl
from runtime_service.model.kernels.attention_configs import (DecodeConfig,
                                                             default_decode_config,
                                                             multiprocessor_count)
from runtime_service.model.kernels.kv_quant import quant_meta, scale_args
from runtime_service.model.kernels.kv_read import fp16_query
from runtime_service.model.kernels.paged_common import (LOG2E, check_common, fp8_as_fp16,
                                                        precision)
from runtime_service.model.kernels.paged_tile import attend_tile
from runtime_service.model.kernels.pdl import INTERPRETED
from runtime_service.model.kernels.rotary import (check_new_kv, head_and_partner, rotate_loaded,
                                                  store_new_head, table_half_offsets)


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
    K_new, V_new, positions, slots, Cos, Sin, stride_nkt, stride_nkh, stride_nvt, stride_nvh,
    stride_c, max_position,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, MERGE_G: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, MIN_SPLIT_KEYS: tl.constexpr,
    PRECISION: tl.constexpr, KV_QUANT: tl.constexpr, FP8_AS_FP16: tl.constexpr,
    ROTARY: tl.constexpr, QMAX: tl.constexpr, IS_INT8: tl.constexpr,
):
    """ROTARY (the step's rotary and cache write, in this launch): Q, K_new and V_new are the
    step's unrotated q, k and v. Every program rotates its q rows as it loads them, and the
    split that holds the new token (the last working one: a decode row's own key is its
    context's last) writes the rotated k and the v of its kv head into the cache slot first,
    then a CTA barrier orders those stores before its own key loads. No other program reads
    that slot in this launch. The bits are `rotary_store_kv_`'s, then this kernel's.

    Only the splits that get keys (`_split_span`) run; when that is one, it writes the
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
    if ROTARY:
        q = _rotary_and_store(Q, K_new, V_new, K_cache, V_cache, K_scale, V_scale, positions,
                              slots, Cos, Sin, seq, kv_head, heads, g_mask, offs_d, d_mask,
                              split == working - 1, stride_qt, stride_qh, stride_nkt,
                              stride_nkh, stride_nvt, stride_nvh, stride_kb, stride_ks,
                              stride_kh, stride_vb, stride_vs, stride_vh, stride_sb, stride_ss,
                              stride_c, max_position, BLOCK_SIZE, HEAD_DIM // 2, KV_QUANT,
                              QMAX, IS_INT8)
    else:
        q = tl.load(Q + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    q_max = tl.full([BLOCK_G], 1.0, dtype=tl.float32)
    if FP8_AS_FP16:
        q, q_max = fp16_query(q)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    table = block_tables + seq * stride_bt
    tile_args = (table, K_cache + kv_head * stride_kh, V_cache + kv_head * stride_vh,
                 K_scale + kv_head, V_scale + kv_head, offs_d, d_mask, stride_kb, stride_ks,
                 stride_vb, stride_vs, stride_sb, stride_ss, scale_log2)
    # Every tile masked, the last one's loads then overlap the loop's: peeling it off to run
    # the whole tiles unmasked (paged_tile.py) made a 16-bit cache's short contexts 13-20%
    # slower and an fp8 one's at most 3% faster (H100, bench/NOTES.md run 29b).
    for start_n in range(start, end, BLOCK_N):
        m_i, l_i, acc = attend_tile(q, q_max, m_i, l_i, acc, start_n, end, 0, *tile_args,
                                    BLOCK_N, BLOCK_SIZE, PRECISION, KV_QUANT, FP8_AS_FP16,
                                    True, False)
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


@jit_keys.helper
@triton.jit
def _stores_reach_l2():
    """A gpu-scope fence: this thread's stores are in L2 before it goes on. The key loads that
    follow run as asynchronous copies that read L2 (cp.async.cg), past the SM's L1 that a CTA
    barrier orders; without the fence the program that wrote the new key read the slot's old
    one on an H100 (run 25c)."""
    if not INTERPRETED:     # no inline assembly there, nor a need: one program at a time
        tl.inline_asm_elementwise("fence.acq_rel.gpu;\n mov.u32 $0, $1;", "=r,r",
                                  [tl.full([1], 0, tl.int32)], dtype=tl.int32, is_pure=False,
                                  pack=1)


@jit_keys.helper
@triton.jit
def _rotary_and_store(Q, K_new, V_new, K_cache, V_cache, K_scale, V_scale, positions, slots,
                      Cos, Sin, seq, kv_head, heads, g_mask, offs_d, d_mask, writes_new_kv,
                      stride_qt, stride_qh, stride_nkt, stride_nkh, stride_nvt, stride_nvh,
                      stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                      stride_sb, stride_ss, stride_c, max_position, BLOCK_SIZE: tl.constexpr,
                      HALF: tl.constexpr, KV_QUANT: tl.constexpr, QMAX: tl.constexpr,
                      IS_INT8: tl.constexpr):
    """The program's rotated q rows; with `writes_new_kv`, also the new token's rotated k and
    its v for this kv head into the cache (nothing for a padded row, whose slot is negative).
    Every load comes first, q's and the new k's and v's (whose addresses need only the row)
    beside the position and slot: their round trips to memory overlap instead of following
    one another (offline sm_90 SASS: about eight dependent trips before the first key tile
    before this, bench/NOTES.md run 27). Every program reads the new k and v; one stores them."""
    pos = tl.load(positions + seq).to(tl.int64)
    slot = tl.load(slots + seq).to(tl.int64)
    d_row = offs_d[None, :]
    row_mask = d_mask[None, :]
    q_x, q_partner = head_and_partner(Q + seq * stride_qt + heads[:, None] * stride_qh, d_row,
                                      g_mask[:, None] & row_mask, HALF)
    k_x, k_partner = head_and_partner(K_new + seq * stride_nkt + kv_head * stride_nkh, d_row,
                                      row_mask, HALF)
    v = tl.load(V_new + seq * stride_nvt + kv_head * stride_nvh + d_row, mask=row_mask,
                other=0.0)
    pos = tl.minimum(tl.maximum(pos, 0), max_position - 1)
    table_d = table_half_offsets(offs_d, HALF)
    c = tl.load(Cos + pos * stride_c + table_d, mask=d_mask, other=0.0)
    s = tl.load(Sin + pos * stride_c + table_d, mask=d_mask, other=0.0)
    c = c[None, :]                  # both loads first, then their layout changes
    s = s[None, :]
    if writes_new_kv:
        if slot >= 0:
            block = slot // BLOCK_SIZE
            within = slot % BLOCK_SIZE
            scale_offs = block * stride_sb + within * stride_ss + kv_head
            store_new_head(rotate_loaded(k_x, k_partner, d_row, c, s, HALF),
                           K_cache + block * stride_kb + within * stride_ks + kv_head * stride_kh,
                           K_scale + scale_offs, d_row, row_mask, KV_QUANT, QMAX, IS_INT8)
            store_new_head(v,
                           V_cache + block * stride_vb + within * stride_vs + kv_head * stride_vh,
                           V_scale + scale_offs, d_row, row_mask, KV_QUANT, QMAX, IS_INT8)
        _stores_reach_l2()
        tl.debug_barrier()          # the slot's stores before this program's key loads
    return rotate_loaded(q_x, q_partner, d_row, c, s, HALF)


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


# ---- launcher ----------------------------------------------------------------------------------

def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
           num_splits: int, out: torch.Tensor | None = None,
           fused_combine: bool = True, config: DecodeConfig | None = None,
           k_scale: torch.Tensor | None = None,
           v_scale: torch.Tensor | None = None, new_kv: NewKV | None = None) -> torch.Tensor:
    """One query row per sequence (q [B, Hq, D]) over its whole cached context -> [B, Hq, D].

    `fused_combine=False` merges the splits in a second launch instead of in the decode launch;
    the result has the same bits (the tests compare the two). `config` overrides
    `default_decode_config`. `k_scale`/`v_scale`: int8 / fp8 caches, as in `prefill`.
    `new_kv`: q is not yet rotated, and the step's k and v are not yet in the caches; this
    launch rotates q (not in place) and writes them, with the bits of `rotary_store_kv_`
    followed by this function (one launch instead of two a layer)."""
    num_heads, num_kv_heads, head_dim, block_size = check_common(q, k_cache, v_cache,
                                                                  block_tables, k_scale, v_scale)
    num_seqs = q.shape[0]
    if new_kv is not None:
        check_new_kv(q, new_kv.k, new_kv.v, k_cache, v_cache, new_kv.positions,
                     new_kv.slot_mapping, new_kv.cos, new_kv.sin, k_scale, v_scale)
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
                                             multiprocessor_count(q.device),
                                             eight_bit=k_scale is not None)
    block_d = triton.next_power_of_2(head_dim)
    merge_g = triton.next_power_of_2(group)
    min_split_keys = triton.cdiv(config.min_split_keys, config.block_n) * config.block_n
    partial = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32,
                          device=q.device)
    lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    # Both paths pass the counts (unused by the two-launch path) so they run one binary.
    counts = arrival_counts.counts_for(q.device, num_seqs * num_kv_heads)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, partial, lse, out, counts, block_tables, seq_lens, scale * LOG2E,
        int(fused_combine),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), *scale_args(k_cache, k_scale, v_scale),
        *_new_kv_args(q, new_kv), **_new_kv_meta(k_cache, new_kv),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), MERGE_G=merge_g,
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=config.block_n,
        NUM_SPLITS=num_splits, MIN_SPLIT_KEYS=min_split_keys, PRECISION=precision(q),
        KV_QUANT=k_scale is not None, FP8_AS_FP16=fp8_as_fp16(q, k_cache),
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


@dataclass(frozen=True)
class NewKV:
    """A decode step's unrotated k and v [B, Hkv, D], where they go (slot_mapping [B], negative
    for padded rows) and the rotary inputs (positions [B], cos/sin [max_position, D] in q's
    dtype), for `decode` to rotate and store them itself."""

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def _new_kv_args(q: torch.Tensor, new_kv: NewKV | None) -> tuple:
    if new_kv is None:          # unused pointers and strides (ROTARY is off)
        return (q, q, q, q, q, q, 0, 0, 0, 0, 0, 1)
    k, v, cos = new_kv.k, new_kv.v, new_kv.cos
    return (k, v, new_kv.positions, new_kv.slot_mapping, cos, new_kv.sin, k.stride(0),
            k.stride(1), v.stride(0), v.stride(1), cos.stride(0), cos.shape[0])


def _new_kv_meta(k_cache: torch.Tensor, new_kv: NewKV | None) -> dict:
    meta = quant_meta(k_cache)
    return dict(ROTARY=new_kv is not None, QMAX=meta["QMAX"], IS_INT8=meta["IS_INT8"])
