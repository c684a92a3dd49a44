"""Paged attention's key tiles against the cache's blocks (paged_tile.py), on Triton's interpreter:
a tile may lie inside one block (a scalar block id per tile), span whole blocks, or neither
(each key's block divided out). Block tables here are shuffled, so a tile that took the wrong
block, or one block for keys of two, reads another sequence's keys. Decode: contexts ending
inside tiles, on tile edges and at one key, over one and several splits. Prefill: chunks after
a cached context, whole tiles unmasked before the diagonal. A 16-bit cache and an int8 one
(whose scales are addressed the same way)."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
import torch
from runtime_service.model.kernels import paged_attention as pa
from runtime_service.model.kernels.kv_quant import quantize_kv_reference

g = torch.Generator().manual_seed(0)
heads, kv_heads, head_dim = 4, 2, 32
seq_lens = [1, 16, 31, 64, 97]
lens = torch.tensor(seq_lens, dtype=torch.int32)
scale = head_dim ** -0.5


def shuffled_tables(block_size):
    counts = [-(-n // block_size) for n in seq_lens]
    order = torch.randperm(sum(counts) + 3, generator=g)      # spare blocks hold other keys
    tables = torch.full((len(seq_lens), max(counts) + 1), -1, dtype=torch.int32)
    used = 0
    for row, count in enumerate(counts):
        tables[row, :count] = order[used:used + count]
        used += count
    return tables, sum(counts) + 3


# (block size, keys per tile): tiles inside blocks, equal to them, spanning two, neither
for block_size, block_n in ((64, 32), (16, 16), (16, 32), (24, 16)):
    tables, blocks = shuffled_tables(block_size)
    shape = (blocks, block_size, kv_heads, head_dim)
    k, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    q = torch.randn(len(seq_lens), heads, head_dim, generator=g)
    ref = pa.decode_reference(q, k, v, tables, lens, scale)
    (k_q, k_scale), (v_q, v_scale) = (quantize_kv_reference(t, torch.int8) for t in (k, v))
    ref_q = pa.decode_reference(q, k_q, v_q, tables, lens, scale, k_scale, v_scale)
    for splits in (1, 4):
        config = pa.DecodeConfig(block_n=block_n, num_warps=2, num_stages=2)
        out = pa.decode(q, k, v, tables, lens, scale, splits, config=config)
        err = ((out - ref).norm() / ref.norm()).item()
        assert err < 1e-5, (block_size, block_n, splits, err)
        out = pa.decode(q, k_q, v_q, tables, lens, scale, splits, config=config,
                        k_scale=k_scale, v_scale=v_scale)
        err = ((out - ref_q).norm() / ref_q.norm()).item()
        assert err < 1e-5, ("int8", block_size, block_n, splits, err)
    # prefill: the last few tokens of each sequence as this step's queries, the rest cached
    query_lens = [min(n, q_len) for n, q_len in zip(seq_lens, (1, 5, 16, 33, 40))]
    starts = torch.tensor([0] + query_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(starts[-1]), heads, head_dim, generator=g)
    config = pa.PrefillConfig(block_m=16, block_n=block_n, num_warps=2, num_stages=2)
    for caches, scales in (((k, v), {}), ((k_q, v_q), {"k_scale": k_scale, "v_scale": v_scale})):
        ref = pa.prefill_reference(q, *caches, tables, starts, lens, scale, *scales.values())
        out = pa.prefill(q, *caches, tables, starts, lens, max(query_lens), scale,
                         config=config, **scales)
        err = ((out - ref).norm() / ref.norm()).item()
        assert err < 1e-5, ("prefill", bool(scales), block_size, block_n, err)
print("ok")
"""


@needs_triton
def test_tiles_take_each_keys_own_block_from_shuffled_tables():
    assert run_on_interpreter(_CHECK).strip() == "ok"
