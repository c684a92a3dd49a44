"""The decode kernel's own rotary and cache write (`paged_attention.decode(..., new_kv=...)`)
changes no bit against `rotary_store_kv_` followed by `decode` (CUDA only): the output, both
caches and, for int8 / fp8 caches, their scales, for every split count and both merges, with
CUDA-graph padding rows (slot -1) in the batch. q itself is left as it was. Inputs are drawn anew
on every run (the seed is printed on failure); the q, k and v are views into one qkv row, as the
model lays them out."""

from __future__ import annotations

import random

import pytest
import torch

from support.seeds import module_seed

pytestmark = pytest.mark.gpu

SEED = module_seed()
BLOCK_SIZE = 16
MAX_POSITION = 2048
CACHE_DTYPES = [None, torch.int8, torch.float8_e4m3fn]


def _cos_sin(head_dim: int, dtype: torch.dtype):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim))
    freqs = torch.arange(MAX_POSITION, device="cuda").float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _caches(shape, dtype, cache_dtype, generator):
    from runtime_service.model.kernels.kv_quant import quantize_kv_reference

    caches = [torch.randn(shape, generator=generator).to(dtype).cuda() for _ in range(2)]
    if cache_dtype is None:
        return caches, [None, None]
    quantized = [quantize_kv_reference(cache, cache_dtype) for cache in caches]
    return [codes for codes, _ in quantized], [scales for _, scales in quantized]


@pytest.mark.parametrize("fused_combine", [True, False])
@pytest.mark.parametrize("num_splits", [1, 8, 32])
@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("heads", [(32, 8, 128), (9, 3, 64)], ids=["llama3", "smollm2"])
def test_decode_that_stores_the_step_equals_the_store_launch_then_decode(
        heads, dtype, cache_dtype, num_splits, fused_combine):
    from runtime_service.model.kernels import paged_attention as pa
    from runtime_service.model.kernels.rotary import rotary_store_kv_

    num_heads, num_kv_heads, head_dim = heads
    rng = random.Random(SEED + num_splits + head_dim)
    generator = torch.Generator().manual_seed(SEED + num_splits)
    seq_lens = [rng.randint(1, 600) for _ in range(5)] + [1, 1]         # two padding rows
    blocks = [-(-n // BLOCK_SIZE) for n in seq_lens]
    num_blocks = sum(blocks) + 1
    order = (torch.randperm(num_blocks - 1, generator=generator) + 1).tolist()
    tables = torch.full((len(seq_lens), max(blocks) + 1), -1, dtype=torch.int32)
    slots, used = [], 0
    for i, n in enumerate(seq_lens):
        tables[i, :blocks[i]] = torch.tensor(order[used:used + blocks[i]])
        used += blocks[i]
        slots.append(int(tables[i, (n - 1) // BLOCK_SIZE]) * BLOCK_SIZE + (n - 1) % BLOCK_SIZE)
    tables[-2:, 0] = 0
    slots[-2:] = [-1, -1]
    tables = tables.cuda()
    lens = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
    slot_mapping = torch.tensor(slots, dtype=torch.int64, device="cuda")
    positions = torch.tensor([n - 1 for n in seq_lens], dtype=torch.int64, device="cuda")
    cos, sin = _cos_sin(head_dim, dtype)
    qkv = torch.randn(len(seq_lens), (num_heads + 2 * num_kv_heads) * head_dim,
                      generator=generator).to(dtype).cuda()
    q, k, v = qkv.split((num_heads * head_dim, num_kv_heads * head_dim,
                         num_kv_heads * head_dim), dim=-1)
    q, k, v = (t.view(len(seq_lens), -1, head_dim) for t in (q, k, v))
    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    caches, scales = _caches(shape, dtype, cache_dtype, generator)
    two = ([c.clone() for c in caches], [s if s is None else s.clone() for s in scales])
    one = ([c.clone() for c in caches], [s if s is None else s.clone() for s in scales])
    scale = head_dim ** -0.5

    q_rotated = q.clone()
    rotary_store_kv_(q_rotated, k, v, *two[0], positions, slot_mapping, cos, sin, *two[1])
    expected = pa.decode(q_rotated, *two[0], tables, lens, scale, num_splits,
                         fused_combine=fused_combine, k_scale=two[1][0], v_scale=two[1][1])
    q_before = q.clone()
    got = pa.decode(q, *one[0], tables, lens, scale, num_splits, fused_combine=fused_combine,
                    k_scale=one[1][0], v_scale=one[1][1],
                    new_kv=pa.NewKV(k, v, positions, slot_mapping, cos, sin))
    torch.cuda.synchronize()
    context = f"seed {SEED}, lens {seq_lens}"
    assert torch.equal(got, expected), context
    assert torch.equal(q, q_before), context
    for mine, theirs in zip(one[0] + one[1], two[0] + two[1]):
        assert mine is None or torch.equal(mine, theirs), context
