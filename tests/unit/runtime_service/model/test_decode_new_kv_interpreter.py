"""The decode kernel's own rotary and cache write, on Triton's interpreter: `decode(...,
new_kv=...)` gives the output, caches and int8 scales of `rotary_store_kv_` followed by
`decode`, bit for bit, over one and four splits and both merges, with a padding row (slot -1)
and a head dimension the tile pads (40 of 64). q is left as it was. The GPU runs the same over
bf16 / fp16 and fp8 caches through tests/gpu/test_decode_new_kv.py."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
import torch
from support.block_tables import consecutive_block_tables
from runtime_service.model.kernels import paged_attention as pa
from runtime_service.model.kernels.kv_quant import quantize_kv_reference
from runtime_service.model.kernels.rotary import rotary_store_kv_

g = torch.Generator().manual_seed(0)
block_size, heads, kv_heads, head_dim = 16, 6, 2, 40
seq_lens = [1, 17, 70, 33, 1]
tables, used = consecutive_block_tables(seq_lens, block_size)
tables[-1, 0] = 0                                   # the padding row: block 0, no slot
lens = torch.tensor(seq_lens, dtype=torch.int32)
slots = torch.tensor([int(tables[i, (n - 1) // block_size]) * block_size + (n - 1) % block_size
                      for i, n in enumerate(seq_lens)])
slots[-1] = -1
positions = torch.tensor(seq_lens) + 2
inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
freqs = torch.outer(torch.arange(128).float(), inv_freq)
cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
shape = (used + 2, block_size, kv_heads, head_dim)
for int8 in (False, True):
    k0, v0 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    scales0 = [None, None]
    if int8:
        (k0, ks), (v0, vs) = (quantize_kv_reference(t, torch.int8) for t in (k0, v0))
        scales0 = [ks, vs]
    q = torch.randn(len(seq_lens), heads, head_dim, generator=g)
    k = torch.randn(len(seq_lens), kv_heads, head_dim, generator=g)
    v = torch.randn(len(seq_lens), kv_heads, head_dim, generator=g)
    for splits in (1, 4):
        for fused in (True, False):
            copies = []
            for _ in range(2):
                copies.append(([k0.clone(), v0.clone()],
                               [s if s is None else s.clone() for s in scales0]))
            q_rotated = q.clone()
            rotary_store_kv_(q_rotated, k, v, *copies[0][0], positions, slots, cos, sin,
                             *copies[0][1])
            want = pa.decode(q_rotated, *copies[0][0], tables, lens, head_dim ** -0.5, splits,
                             fused_combine=fused, k_scale=copies[0][1][0],
                             v_scale=copies[0][1][1])
            q_in = q.clone()
            got = pa.decode(q_in, *copies[1][0], tables, lens, head_dim ** -0.5, splits,
                            fused_combine=fused, k_scale=copies[1][1][0],
                            v_scale=copies[1][1][1],
                            new_kv=pa.NewKV(k, v, positions, slots, cos, sin))
            case = (int8, splits, fused)
            assert torch.equal(got, want), case
            assert torch.equal(q_in, q), case
            for mine, theirs in zip(copies[1][0] + copies[1][1], copies[0][0] + copies[0][1]):
                assert mine is None or torch.equal(mine, theirs), case
print("ok")
"""


@needs_triton
def test_decode_that_stores_the_step_matches_the_store_launch_then_decode():
    assert run_on_interpreter(_CHECK).strip().endswith("ok")
