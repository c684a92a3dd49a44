"""Split-K decode attention on Triton's interpreter: only the splits that get keys run, a row that
one split covers is written by that split with no merge, and the in-launch merge of a group's
heads equals the two-launch merge bit for bit. Contexts of 1 to 130 tokens over 1, 4 and 8
splits, with splits of at least 0, 48 (rounded up to whole key tiles) and 256 keys, against the
float32 reference. The GPU runs the same through tests/gpu/test_decode_fused_combine.py."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
import torch
from support.block_tables import consecutive_block_tables
from runtime_service.model.kernels import arrival_counts
from runtime_service.model.kernels import paged_attention as pa

g = torch.Generator().manual_seed(0)
heads, kv_heads, head_dim, block_size = 6, 2, 32, 16       # a group of 3: a padded head tile
seq_lens = [1, 17, 70, 130, 2]
tables, used = consecutive_block_tables(seq_lens, block_size)
shape = (used + 2, block_size, kv_heads, head_dim)
k, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
q = torch.randn(len(seq_lens), heads, head_dim, generator=g)
lens = torch.tensor(seq_lens, dtype=torch.int32)
scale = head_dim ** -0.5
ref = pa.decode_reference(q, k, v, tables, lens, scale)
for splits in (1, 4, 8):
    for min_keys in (0, 48, 256):
        config = pa.DecodeConfig(block_n=32, num_warps=2, num_stages=2, min_split_keys=min_keys)
        out = {}
        for fused in (True, False):
            out[fused] = torch.full_like(q, float("nan"))
            pa.decode(q, k, v, tables, lens, scale, splits, out=out[fused],
                      fused_combine=fused, config=config)
        assert torch.equal(out[True], out[False]), (splits, min_keys)
        err = ((out[True] - ref).norm() / ref.norm()).item()
        assert err < 1e-5, (splits, min_keys, err)
        assert not arrival_counts.counts_for(q.device, 1).any(), (splits, min_keys)
print("ok")
"""


@needs_triton
def test_decode_runs_only_the_splits_with_keys_and_merges_bit_for_bit():
    assert run_on_interpreter(_CHECK).strip().endswith("ok")
