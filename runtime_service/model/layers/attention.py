"""Paged attention: the batch description every backend reads, and the plain-torch reference.

A step's tokens are laid out flat ([T, ...]); sequence i owns query rows
query_start[i]:query_start[i+1] and, after this step, has seq_lens[i] tokens of context in the
KV cache, reached through its block table. Newly computed keys and values are written to the
cache at `slot_mapping` (block * block_size + offset) before attention reads it, so a sequence's
earlier chunks, prefix-cache hits and its new tokens are read the same way.

Backends take q and k before rotary and apply the layer's rotary module themselves, so a fast
backend can fuse the rotation into its cache write.

The reference backend loops over sequences and is the oracle that fast kernels are tested against;
it runs on the CPU and on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime_service.model.layers.kv_quant import QuantizedKVCache


@dataclass
class AttentionMetadata:
    positions: torch.Tensor        # [T] int64, absolute position of each token
    slot_mapping: torch.Tensor     # [T] int64, cache slot each token's k/v is written to
    query_start: torch.Tensor      # [B + 1] int32, prefix sums of query lengths
    seq_lens: torch.Tensor         # [B] int32, context length after this step
    block_tables: torch.Tensor     # [B, max_blocks] int32, -1 padded
    token_seq_lens: torch.Tensor   # [T] int64, each token's seq_len (dynamic rope)
    query_lens_host: list[int]
    seq_lens_host: list[int]
    block_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def is_decode(self) -> bool:
        """Every sequence computes exactly one token this step."""
        return all(n == 1 for n in self.query_lens_host)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Stores k, v [T, Hkv, D] into caches [num_blocks, block_size, Hkv, D] at flat slots
    (quantizing them, for an INT8 / FP8 cache)."""
    if isinstance(k_cache, QuantizedKVCache):
        k_cache.write(slot_mapping, k)
        v_cache.write(slot_mapping, v)
        return
    num_blocks, block_size = k_cache.shape[:2]
    k_cache.view(num_blocks * block_size, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(num_blocks * block_size, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


class TorchReferenceAttention:
    """Loops over sequences, gathers each one's context from its blocks, runs causal softmax."""

    name = "torch"

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, meta: AttentionMetadata, rotary) -> torch.Tensor:
        q, k = rotary(meta.positions, q, k, meta.token_seq_lens)
        write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
        out = torch.empty_like(q)
        group = self.num_heads // self.num_kv_heads
        start = 0
        for i, (q_len, seq_len) in enumerate(zip(meta.query_lens_host, meta.seq_lens_host)):
            num_blocks = -(-seq_len // meta.block_size)
            blocks = meta.block_tables[i, :num_blocks].long()
            keys = k_cache[blocks].flatten(0, 1)[:seq_len]
            values = v_cache[blocks].flatten(0, 1)[:seq_len]
            if group > 1:
                keys = keys.repeat_interleave(group, dim=1)
                values = values.repeat_interleave(group, dim=1)
            query = q[start:start + q_len].transpose(0, 1)          # [H, q_len, D]
            context_before = seq_len - q_len
            # A whole new sequence is plain causal attention, which takes SDPA's fast kernels;
            # a chunk after cached context needs the offset mask.
            mask = None if context_before == 0 else torch.ones(
                q_len, seq_len, dtype=torch.bool, device=q.device).tril(context_before)
            attn = torch.nn.functional.scaled_dot_product_attention(
                query, keys.transpose(0, 1), values.transpose(0, 1), attn_mask=mask,
                is_causal=mask is None and q_len > 1, scale=self.scale)
            out[start:start + q_len] = attn.transpose(0, 1)
            start += q_len
        return out
