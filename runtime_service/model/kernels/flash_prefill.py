"""One sequence's prefill through a fused attention kernel torch ships, its cached context paged
in after.

The paged prefill kernel (paged_attention.py) runs a 1024-token prompt's attention at 1.5x the
time of torch's SDPA on an H200 (bench/bench_prefill_attention.py, run 19c: 49 against 32 us a
layer), which is 0.55 ms of its time to first token. SDPA's kernel there is cuDNN's (run 20e);
neither it nor flash reads a block table, so a step of one sequence is split in two:

- `causal_flash`: the step's own tokens attend to each other (causal) through cuDNN's fused
  attention (`aten._scaled_dot_product_cudnn_attention`), or flash's where cuDNN has no kernel;
  both return each row's log-sum-exp;
- `merge_context`: a Triton kernel attends the same rows to the sequence's cached context (an
  earlier chunk, a prefix-cache hit) through the block table, and folds that into flash's
  output in place by the two log-sum-exps. A sequence without context returns at once, so a
  fresh prompt costs flash and one empty launch.

Both read only launch-time shapes and device tensors, so a prefill CUDA graph can hold them: the
context length comes from `seq_lens` at replay. Rows past the sequence's query rows (CUDA-graph
padding) keep flash's output, which nothing reads. The keys given to flash must be rotated
(`rotary_store_kv_(..., rotate_k=True)`), as the cache holds them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.model.kernels import pdl
from runtime_service.model.kernels.paged_common import LOG2E, precision
from runtime_service.model.kernels.paged_tile import attend_tile

FLASH_DTYPES = (torch.float16, torch.bfloat16)


@triton.jit
def _context_merge_kernel(
    Q, K_cache, V_cache, Out, Lse, block_tables, query_start, seq_lens, scale_log2,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_lh, stride_lt,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pdl.await_previous_kernel()
    m_block = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(query_start + seq)
    q_len = tl.load(query_start + seq + 1) - q_start
    context = tl.load(seq_lens + seq) - q_len
    if m_block * BLOCK_M >= q_len or context <= 0:
        return
    kv_head = head // GROUP
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    m_mask = offs_m < q_len
    rows = (q_start + offs_m).to(tl.int64)
    io_mask = m_mask[:, None] & d_mask[None, :]
    q = tl.load(Q + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :], mask=io_mask,
                other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    q_max = tl.full([BLOCK_M], 1.0, dtype=tl.float32)      # an unquantized cache: unused
    table = block_tables + seq * stride_bt
    # Every context key is visible to every row: whole tiles skip the masks, a partial last
    # tile keeps its bound (its causal test always holds for keys before the context's end).
    full = context // BLOCK_N * BLOCK_N
    tile_args = (context, 0, table, K_cache + kv_head * stride_kh, V_cache + kv_head * stride_vh,
                 K_cache, V_cache, offs_d, d_mask, stride_kb, stride_ks, stride_vb, stride_vs,
                 0, 0, scale_log2)
    for start_n in range(0, full, BLOCK_N):
        m_i, l_i, acc = attend_tile(q, q_max, m_i, l_i, acc, start_n, *tile_args, BLOCK_N,
                                    BLOCK_SIZE, PRECISION, False, False, False, False)
    for start_n in range(full, context, BLOCK_N):
        m_i, l_i, acc = attend_tile(q, q_max, m_i, l_i, acc, start_n, *tile_args, BLOCK_N,
                                    BLOCK_SIZE, PRECISION, False, False, True, False)
    # Fold in flash's part by the two log-sum-exps (natural log; ours was kept in base 2).
    lse_context = (m_i + tl.log2(l_i)) * 0.6931471805599453        # ln 2
    lse_new = tl.load(Lse + head * stride_lh + rows * stride_lt, mask=m_mask, other=0.0)
    top = tl.maximum(lse_context, lse_new)
    w_context = tl.exp(lse_context - top)
    w_new = tl.exp(lse_new - top)
    o_ptrs = Out + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    o_new = tl.load(o_ptrs, mask=io_mask, other=0.0).to(tl.float32)
    merged = ((acc / l_i[:, None]) * w_context[:, None] + o_new * w_new[:, None]) \
        / (w_context + w_new)[:, None]
    tl.store(o_ptrs, merged.to(Out.dtype.element_ty), mask=io_mask)


def merge_context(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  block_tables: torch.Tensor, query_start: torch.Tensor, seq_lens: torch.Tensor,
                  max_query_len: int, scale: float, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Adds each sequence's cached context (its first seq_len - q_len keys) to `out` [T, Hq, D],
    which holds the attention of its query rows over its own new keys, with their natural-log
    log-sum-exps `lse` [Hq, >= T]. In place; rows of sequences without context are left alone."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    if out.shape != q.shape or out.stride(2) != 1 or lse.dim() != 2 or lse.shape[0] != num_heads \
            or lse.shape[1] < q.shape[0] or lse.dtype != torch.float32:
        raise ValueError(f"out must be like q {tuple(q.shape)} and lse float32 [{num_heads}, >= "
                         f"{q.shape[0]}]; got {tuple(out.shape)}, {tuple(lse.shape)} {lse.dtype}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[3] != head_dim \
            or num_heads % num_kv_heads or k_cache.dtype != q.dtype:
        raise ValueError(f"caches {tuple(k_cache.shape)} {k_cache.dtype} do not fit q "
                         f"{tuple(q.shape)} {q.dtype}")
    num_seqs = seq_lens.shape[0]
    if num_seqs == 0 or max_query_len == 0:
        return
    block_m = 64 if max_query_len > 32 else 16
    grid = (triton.cdiv(max_query_len, block_m), num_seqs, num_heads)
    _context_merge_kernel[grid](
        q, k_cache, v_cache, out, lse, block_tables, query_start, seq_lens, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), lse.stride(0), lse.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=block_size, HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_M=block_m,
        BLOCK_N=64 if head_dim <= 128 else 32, PRECISION=precision(q), num_warps=4,
        num_stages=2, **pdl.LAUNCH,
    )


# Which fused kernel `causal_flash` runs, decided once per device and attention shape (query
# heads, kv heads, head dim, dtype: what cuDNN's support depends on) by a small eager call, never
# inside a CUDA-graph capture (the warm-up's eager prefill decides first). cuDNN's attention is
# the faster one on Hopper: 30 against 55 us a layer for 1024 tokens with Llama-3-8B heads,
# 273 against 500 at 4096 (bench/NOTES.md, run 20d); flash is the fallback where cuDNN has no
# kernel for the shape or dtype.
_kernel_for_shape: dict[tuple, str] = {}


def _cudnn(q4, k4, v4, scale):
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q4, k4, v4, None, True, 0.0, True, False, scale=scale)[:2]
    return out, lse[..., 0] if lse.dim() == 4 else lse


def _flash(q4, k4, v4, scale):
    return torch.ops.aten._scaled_dot_product_flash_attention(
        q4, k4, v4, 0.0, True, False, scale=scale)[:2]


def shape_key(q: torch.Tensor, k: torch.Tensor) -> tuple:
    """What the choice of kernel is kept by: the device, the heads, the head dim, the dtype."""
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    return index, q.shape[1], k.shape[1], q.shape[2], q.dtype


def fused_kernel(q: torch.Tensor, k: torch.Tensor) -> str:
    """"cudnn" when cuDNN's attention runs this shape on this device and agrees with flash,
    else "flash"."""
    key = shape_key(q, k)
    choice = _kernel_for_shape.get(key)
    if choice is not None:
        return choice
    if torch.cuda.is_current_stream_capturing():
        return "flash"
    choice = "flash"
    if torch.backends.cuda.cudnn_sdp_enabled():
        probe = [torch.randn(1, 64, h, q.shape[2], device=q.device, dtype=q.dtype).transpose(1, 2)
                 for h in (q.shape[1], k.shape[1], k.shape[1])]     # laid out as the prefill's
        try:
            got, got_lse = _cudnn(*probe, 0.1)
            want, want_lse = _flash(*probe, 0.1)
            if (got - want).abs().max().item() < 2e-2 and \
                    (got_lse - want_lse[..., :got_lse.shape[-1]]).abs().max().item() < 1e-3:
                choice = "cudnn"
        except RuntimeError:            # no cuDNN kernel here: flash it is
            pass
    _kernel_for_shape[key] = choice
    return choice


def causal_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of one sequence's rows q [T, Hq, D] over k, v [T, Hkv, D] (grouped
    heads read in place) -> (out [T, Hq, D], natural-log log-sum-exp [Hq, >= T] float32)."""
    run = _cudnn if fused_kernel(q, k) == "cudnn" else _flash
    out, lse = run(q.unsqueeze(0).transpose(1, 2), k.unsqueeze(0).transpose(1, 2),
                   v.unsqueeze(0).transpose(1, 2), scale)
    return out[0].transpose(0, 1), lse[0]


def flash_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, block_tables: torch.Tensor, query_start: torch.Tensor,
                  seq_lens: torch.Tensor, max_query_len: int, scale: float) -> torch.Tensor:
    """The prefill of a step of one sequence: its rows over its new keys by flash, then over its
    cached context by `merge_context` -> [T, Hq, D]."""
    if seq_lens.shape[0] != 1:
        raise ValueError(f"flash_prefill takes a step of one sequence, got {seq_lens.shape[0]}")
    out, lse = causal_flash(q, k, v, scale)
    merge_context(q, k_cache, v_cache, block_tables, query_start, seq_lens, max_query_len, scale,
                  out, lse)
    return out


def causal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 twin of `causal_flash` (keys and values repeated over their query groups)."""
    group = q.shape[1] // k.shape[1]
    keys = k.float().repeat_interleave(group, dim=1).transpose(0, 1)
    values = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = q.float().transpose(0, 1) @ keys.transpose(1, 2) * scale
    n = q.shape[0]
    mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    out = (scores.softmax(-1) @ values).transpose(0, 1).to(q.dtype)
    return out, torch.logsumexp(scores, -1)
