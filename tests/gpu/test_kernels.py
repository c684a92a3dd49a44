"""Triton kernels against their plain-torch references on fresh random inputs (CUDA only).

Inputs are drawn anew on every run (the seed is printed on failure): the kernels must compute the
same function on any valid input, not on one lucky draw. Outputs are poisoned first so an
unwritten element fails the check.
"""

from __future__ import annotations

import random

import pytest
import torch

from gpu.tiers import sweep
from support.seeds import module_seed

pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float16]
SEED = module_seed()


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _paged_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
                 generator):
    """Random caches with each sequence's blocks scattered over the pool, -1-padded tables."""
    device = "cuda"
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 7
    order = torch.randperm(num_blocks, generator=generator).tolist()
    width = max(blocks_per_seq) + 2
    tables = torch.full((len(seq_lens), width), -1, dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        tables[i, :n] = torch.tensor(order[used:used + n])
        used += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator).to(dtype).to(device)
    v_cache = torch.randn(shape, generator=generator).to(dtype).to(device)
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    q = torch.randn(starts[-1], num_heads, head_dim, generator=generator).to(dtype).to(device)
    return (q, k_cache, v_cache, tables.to(device),
            torch.tensor(starts, dtype=torch.int32, device=device),
            torch.tensor(seq_lens, dtype=torch.int32, device=device))


ATTN_SHAPES = [   # (num_heads, num_kv_heads, head_dim, block_size)
    (32, 32, 128, 16), (32, 8, 128, 16), (8, 1, 64, 32), (6, 2, 80, 8), (4, 4, 24, 4),
    (16, 2, 256, 16),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ATTN_SHAPES)
def test_prefill_matches_reference_with_chunked_context(shape, dtype):
    from runtime_service.model.kernels import paged_attention as pa

    num_heads, num_kv_heads, head_dim, block_size = shape
    generator = torch.Generator().manual_seed(SEED + hash(shape) % 1000)
    rng = random.Random(SEED)
    query_lens, seq_lens = [], []
    for _ in range(rng.randint(1, 6)):
        q_len = rng.choice([1, 2, 7, 16, 63, 64, 65, 200])
        context = rng.choice([0, 0, 1, 15, 100, 300])       # earlier chunks / cached prefix
        query_lens.append(q_len)
        seq_lens.append(q_len + context)
    q, k_cache, v_cache, tables, starts, lens = _paged_batch(
        seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, generator)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    pa.prefill(q, k_cache, v_cache, tables, starts, lens, max(query_lens), scale, out=out)
    ref = pa.prefill_reference(q, k_cache, v_cache, tables, starts, lens, scale)
    assert not out.isnan().any(), f"unwritten output (seed {SEED})"
    assert _rel_err(out, ref) < 1e-2, f"seed {SEED}, lens {seq_lens}, q {query_lens}"


PREFILL_CONFIGS = [   # (block_m, block_n, num_warps, num_stages, heavy_first)
    (64, 64, 4, 2, True), (128, 64, 8, 3, True), (128, 32, 8, 2, False), (32, 128, 4, 3, True),
    (16, 16, 1, 1, False)]


@pytest.mark.parametrize("config", sweep(PREFILL_CONFIGS, core=PREFILL_CONFIGS[:2]), ids=str)
@pytest.mark.parametrize("shape", [(32, 8, 128, 16), (6, 2, 80, 8)], ids=str)
def test_prefill_gives_the_same_attention_under_every_launch_shape(shape, config):
    """Tiles, warps, stages and launch order change how the work is cut, never the result:
    a tile that straddles the causal diagonal, a context that ends inside a key tile, a
    sequence shorter than one tile, and sequences whose heaviest tiles are not the grid's last."""
    from runtime_service.model.kernels import paged_attention as pa

    num_heads, num_kv_heads, head_dim, block_size = shape
    generator = torch.Generator().manual_seed(SEED + 7)
    query_lens = [300, 5, 129, 64]
    seq_lens = [300, 5 + 40, 129 + 333, 64 + 16]
    q, k_cache, v_cache, tables, starts, lens = _paged_batch(
        seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, torch.bfloat16,
        generator)
    scale = head_dim ** -0.5
    ref = pa.prefill_reference(q, k_cache, v_cache, tables, starts, lens, scale)
    out = torch.full_like(q, float("nan"))
    pa.prefill(q, k_cache, v_cache, tables, starts, lens, max(query_lens), scale, out=out,
               config=pa.PrefillConfig(*config))
    assert not out.isnan().any(), f"unwritten output (seed {SEED}, {config})"
    assert _rel_err(out, ref) < 1e-2, f"seed {SEED}, {config}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("num_splits", sweep([1, 4, 32], core=(4,)))
def test_split_k_decode_matches_reference(shape, dtype, num_splits):
    from runtime_service.model.kernels import paged_attention as pa

    num_heads, num_kv_heads, head_dim, block_size = shape
    generator = torch.Generator().manual_seed(SEED + num_splits)
    rng = random.Random(SEED + num_splits)
    seq_lens = [rng.choice([1, 2, 17, 64, 129, 1000, 4097]) for _ in range(rng.randint(1, 9))]
    q, k_cache, v_cache, tables, _, lens = _paged_batch(
        seq_lens, [1] * len(seq_lens), num_heads, num_kv_heads, head_dim, block_size, dtype,
        generator)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    pa.decode(q, k_cache, v_cache, tables, lens, scale, num_splits, out=out)
    ref = pa.decode_reference(q, k_cache, v_cache, tables, lens, scale)
    assert not out.isnan().any(), f"unwritten output (seed {SEED})"
    assert _rel_err(out, ref) < 1e-2, f"seed {SEED}, lens {seq_lens}"


def test_float32_attention_uses_exact_products():
    from runtime_service.model.kernels import paged_attention as pa

    generator = torch.Generator().manual_seed(SEED)
    q, k_cache, v_cache, tables, starts, lens = _paged_batch(
        [50, 9], [50, 1], 4, 2, 64, 16, torch.float32, generator)
    out = pa.prefill(q, k_cache, v_cache, tables, starts, lens, 50, 0.125)
    ref = pa.prefill_reference(q, k_cache, v_cache, tables, starts, lens, 0.125)
    assert _rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_writes_slots_and_skips_negative(dtype):
    from runtime_service.model.kernels import kv_store

    generator = torch.Generator().manual_seed(SEED)
    k_cache = torch.randn(9, 16, 8, 128, generator=generator).to(dtype).cuda()
    v_cache = torch.randn_like(k_cache)
    slots = torch.randperm(9 * 16, generator=generator)[:40].cuda()
    slots[::7] = -1
    k = torch.randn(40, 8, 128, device="cuda").to(dtype)
    v = torch.randn(40, 8, 128, device="cuda").to(dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    kv_store.store_kv(k, v, k_cache, v_cache, slots)
    kv_store.store_kv_reference(k, v, k_ref, v_ref, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4096), (7, 4096), (300, 5120), (3, 576), (2, 100)])
def test_rms_norm_matches_reference(shape, dtype):
    from runtime_service.model.kernels.rms_norm import rms_norm, rms_norm_reference

    x = torch.randn(shape, device="cuda").to(dtype) * 3
    weight = torch.randn(shape[-1], device="cuda").to(dtype)
    out = rms_norm(x, weight, 1e-5)
    ref = rms_norm_reference(x, weight, 1e-5)
    assert _rel_err(out, ref) < 1e-2
    assert (out != ref).float().mean().item() < 0.01     # only sum-order rounding flips


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(32, 32, 128), (32, 8, 128), (9, 3, 64), (3, 3, 24)])
def test_rotary_matches_reference_to_rounding(heads, dtype):
    from runtime_service.model.kernels.rotary import apply_rotary_, rotary_reference

    num_heads, num_kv_heads, head_dim = heads
    tokens = random.Random(SEED).randint(1, 300)
    qkv = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, device="cuda").to(dtype)
    q = qkv[:, :num_heads * head_dim].view(tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim:(num_heads + num_kv_heads) * head_dim].view(
        tokens, num_kv_heads, head_dim)
    positions = torch.randint(0, 4096, (tokens,), device="cuda")
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim))
    freqs = torch.arange(4096, device="cuda").float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    q_ref, k_ref = rotary_reference(q.clone(), k.clone(), positions, cos, sin)
    apply_rotary_(q, k, positions, cos, sin)
    for out, ref in ((q, q_ref), (k, k_ref)):
        assert _rel_err(out, ref) < 1e-2, f"seed {SEED}"
        # About a quarter of the elements differ by one unit in the last place (H100, bf16 and
        # fp16): the compiled kernel keeps a product unrounded before the sum. Not a wrong value.
        assert (out != ref).float().mean().item() < 0.4, f"seed {SEED}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2 * 11008), (5, 2 * 14336), (129, 2 * 128), (2, 2 * 100)])
def test_silu_and_mul_matches_reference(shape, dtype):
    from runtime_service.model.kernels.activation import silu_and_mul, silu_and_mul_reference

    x = torch.randn(shape, device="cuda").to(dtype) * 4
    out = silu_and_mul(x)
    ref = silu_and_mul_reference(x)
    assert _rel_err(out, ref) < 1e-2
    assert (out != ref).float().mean().item() < 0.01


def test_launchers_reject_bad_shapes():
    from runtime_service.model.kernels import paged_attention as pa

    q = torch.randn(4, 8, 64, device="cuda", dtype=torch.bfloat16)
    cache = torch.randn(3, 16, 3, 64, device="cuda", dtype=torch.bfloat16)   # 8 % 3 != 0
    tables = torch.zeros(4, 1, dtype=torch.int32, device="cuda")
    lens = torch.ones(4, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError):
        pa.decode(q, cache, cache, tables, lens, 0.1, 1)
    good = torch.randn(3, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError):
        pa.decode(q, good, good, tables, lens, 0.1, 3)                     # not a power of 2


@pytest.mark.parametrize("fields", [dict(block_n=24), dict(block_n=8), dict(num_warps=3),
                                    dict(num_stages=0), dict(num_stages=9),
                                    dict(min_split_keys=-1)], ids=str)
def test_decode_config_rejects_impossible_launch_shapes(fields):
    from runtime_service.model.kernels import paged_attention as pa

    with pytest.raises(ValueError):
        pa.DecodeConfig(**fields)


@pytest.mark.parametrize("fields", [dict(block_m=8), dict(block_m=48), dict(block_n=24),
                                    dict(num_warps=3), dict(num_stages=0)], ids=str)
def test_prefill_config_rejects_impossible_launch_shapes(fields):
    from runtime_service.model.kernels import paged_attention as pa

    with pytest.raises(ValueError):
        pa.PrefillConfig(**fields)
