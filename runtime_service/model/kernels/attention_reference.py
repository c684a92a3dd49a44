"""Plain-torch references of the paged attention kernels (paged_attention.py): float32 attention
over the context gathered through the block table (and dequantized, for int8 / fp8 caches), which
the tests and benchmarks compare the kernels against."""

from __future__ import annotations

import torch

from runtime_service.model.kernels.kv_quant import dequantize_kv_reference


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
