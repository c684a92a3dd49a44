"""The fused rotary + KV-store kernel changes no bit against rotary then store_kv (CUDA only).

Both kernels rotate through the same `_rotate`, so q and the caches must come out equal, not
merely close; a comparison with the plain-torch reference (to rounding) guards against both being
wrong the same way. Inputs are drawn anew on every run (the seed is printed on failure) and laid
out as Attention.forward makes them: views into one fused qkv projection output.
"""

from __future__ import annotations

import random

import pytest
import torch

from support.seeds import module_seed

pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float16]
SEED = module_seed()
MAX_POSITION = 4096
BLOCK_SIZE = 16


def _split_qkv(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int):
    q, k, v = qkv.split((num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim),
                        dim=-1)
    return (q.view(-1, num_heads, head_dim), k.view(-1, num_kv_heads, head_dim),
            v.view(-1, num_kv_heads, head_dim))


def _cos_sin(head_dim: int, dtype: torch.dtype):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim))
    freqs = torch.arange(MAX_POSITION, device="cuda").float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(32, 8), (32, 32)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_fused_rotary_store_kv_is_bit_identical_to_separate_kernels(tokens, head_dim, heads,
                                                                    dtype):
    from runtime_service.model.kernels import kv_store
    from runtime_service.model.kernels.rotary import (apply_rotary_, rotary_store_kv_,
                                                rotary_store_kv_reference)

    num_heads, num_kv_heads = heads
    generator = torch.Generator().manual_seed(SEED + tokens * 1000 + head_dim + num_kv_heads)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(tokens, width, generator=generator).to(dtype).cuda()
    num_blocks = tokens // BLOCK_SIZE + 4
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, num_kv_heads, head_dim,
                          generator=generator).to(dtype).cuda()
    v_cache = torch.randn(k_cache.shape, generator=generator).to(dtype).cuda()
    slots = torch.randperm(num_blocks * BLOCK_SIZE, generator=generator)[:tokens].cuda()
    slots[1::3] = -1                                   # padding rows: rotate q, store nothing
    positions = torch.randint(0, MAX_POSITION, (tokens,), generator=generator).cuda()
    if tokens > 1:
        positions[-1] = MAX_POSITION + 37              # past the table: clamped to its last row
    cos, sin = _cos_sin(head_dim, dtype)

    qkv_sep, k_sep_cache, v_sep_cache = qkv.clone(), k_cache.clone(), v_cache.clone()
    q_sep, k_sep, v_sep = _split_qkv(qkv_sep, num_heads, num_kv_heads, head_dim)
    apply_rotary_(q_sep, k_sep, positions, cos, sin)
    kv_store.store_kv(k_sep, v_sep, k_sep_cache, v_sep_cache, slots)

    k_ref_cache, v_ref_cache = k_cache.clone(), v_cache.clone()
    q, k, v = _split_qkv(qkv, num_heads, num_kv_heads, head_dim)
    q_ref = rotary_store_kv_reference(q.clone(), k, v, k_ref_cache, v_ref_cache, positions, slots,
                                      cos, sin)
    rotary_store_kv_(q, k, v, k_cache, v_cache, positions, slots, cos, sin)

    assert torch.equal(q, q_sep), f"seed {SEED}"
    assert torch.equal(k_cache, k_sep_cache), f"seed {SEED}"
    assert torch.equal(v_cache, v_sep_cache), f"seed {SEED}"
    assert torch.equal(v_cache, v_ref_cache), f"seed {SEED}"
    for out, ref in ((q, q_ref), (k_cache, k_ref_cache)):
        assert _rel_err(out, ref) < 1e-2, f"seed {SEED}"
        # One-ulp differences where the compiled kernel keeps a product unrounded (see
        # test_kernels.test_rotary_matches_reference_to_rounding); a wrong position or slot
        # would differ almost everywhere.
        assert (out != ref).float().mean().item() < 0.4, f"seed {SEED}"


@pytest.mark.parametrize("heads", [(32, 8, 128), (8, 8, 64)])
def test_rotate_k_leaves_the_rotated_keys_in_k_for_rows_with_a_slot(heads):
    """What flash prefill reads its own keys from (flash_prefill.py)."""
    from runtime_service.model.kernels import kv_store
    from runtime_service.model.kernels.rotary import apply_rotary_, rotary_store_kv_

    num_heads, num_kv_heads, head_dim = heads
    tokens = 45
    generator = torch.Generator().manual_seed(SEED + 11)
    qkv = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim,
                      generator=generator).to(torch.bfloat16).cuda()
    num_blocks = tokens // BLOCK_SIZE + 4
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, num_kv_heads, head_dim,
                          generator=generator).to(torch.bfloat16).cuda()
    v_cache = torch.randn(k_cache.shape, generator=generator).to(torch.bfloat16).cuda()
    slots = torch.randperm(num_blocks * BLOCK_SIZE, generator=generator)[:tokens].cuda()
    slots[-3:] = -1                                   # CUDA-graph padding rows
    positions = torch.randint(0, MAX_POSITION, (tokens,), generator=generator).cuda()
    cos, sin = _cos_sin(head_dim, torch.bfloat16)

    q_sep, k_sep, v_sep = _split_qkv(qkv.clone(), num_heads, num_kv_heads, head_dim)
    k_unrotated = k_sep.clone()
    apply_rotary_(q_sep, k_sep, positions, cos, sin)
    k_sep_cache, v_sep_cache = k_cache.clone(), v_cache.clone()
    kv_store.store_kv(k_sep, v_sep, k_sep_cache, v_sep_cache, slots)

    q, k, v = _split_qkv(qkv.clone(), num_heads, num_kv_heads, head_dim)
    rotary_store_kv_(q, k, v, k_cache, v_cache, positions, slots, cos, sin, rotate_k=True)
    assert torch.equal(q, q_sep) and torch.equal(k_cache, k_sep_cache), f"seed {SEED}"
    assert torch.equal(v_cache, v_sep_cache), f"seed {SEED}"
    assert torch.equal(k[:-3], k_sep[:-3]), f"seed {SEED}"
    assert torch.equal(k[-3:], k_unrotated[-3:]), f"seed {SEED}: rows without a slot changed"


def _step(query_lens, seq_lens, tables, width, padding_rows=0):
    """AttentionMetadata for one step; padding rows are CUDA-graph padding (position 0, slot -1,
    one token of context in block 0)."""
    from runtime_service.model.layers.attention import AttentionMetadata

    positions, slots, token_seq_lens = [], [], []
    for q_len, seq_len, table in zip(query_lens, seq_lens, tables):
        for p in range(seq_len - q_len, seq_len):
            positions.append(p)
            slots.append(table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE)
            token_seq_lens.append(seq_len)
    rows = [row + [-1] * (width - len(row)) for row in tables]
    for _ in range(padding_rows):
        positions.append(0)
        slots.append(-1)
        token_seq_lens.append(1)
        rows.append([0] + [-1] * (width - 1))
    query_lens = list(query_lens) + [1] * padding_rows
    seq_lens = list(seq_lens) + [1] * padding_rows
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)

    def tensor(values, dtype):
        return torch.tensor(values, dtype=dtype, device="cuda")

    return AttentionMetadata(
        positions=tensor(positions, torch.int64), slot_mapping=tensor(slots, torch.int64),
        query_start=tensor(starts, torch.int32), seq_lens=tensor(seq_lens, torch.int32),
        block_tables=tensor(rows, torch.int32), token_seq_lens=tensor(token_seq_lens, torch.int64),
        query_lens_host=query_lens, seq_lens_host=seq_lens, block_size=BLOCK_SIZE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(32, 8, 128), (8, 8, 64)])
def test_backend_fused_path_equals_separate_kernels_over_prefill_and_decode(heads, dtype):
    from runtime_service.model.layers.attention_triton import TritonPagedAttention
    from runtime_service.model.layers.rotary import RotaryEmbedding
    from runtime_service.format.model_config import ModelArgs

    num_heads, num_kv_heads, head_dim = heads
    args = ModelArgs(vocab_size=16, hidden_size=num_heads * head_dim, intermediate_size=16,
                     num_layers=1, num_heads=num_heads, num_kv_heads=num_kv_heads,
                     head_dim=head_dim, max_position_embeddings=MAX_POSITION)
    rotary = RotaryEmbedding(args).cuda()
    fused = TritonPagedAttention(num_heads, num_kv_heads, head_dim, "cuda")
    separate = TritonPagedAttention(num_heads, num_kv_heads, head_dim, "cuda", fuse_rotary=False)
    # the rotary-and-store launch, then decode: the path before the decode kernel stored
    in_two = TritonPagedAttention(num_heads, num_kv_heads, head_dim, "cuda",
                                  decode_stores_kv=False)
    rng = random.Random(SEED)
    generator = torch.Generator().manual_seed(SEED)

    # Prefill: whole prompts and a chunk after 40 cached tokens; then one decode step for each
    # sequence, padded by two rows as a CUDA graph would be.
    query_lens = [rng.randint(1, 70), 33, 1]
    context = [0, 40, rng.randint(0, 20)]
    prefill_lens = [q + c for q, c in zip(query_lens, context)]
    blocks_per_seq = [-(-(n + 1) // BLOCK_SIZE) for n in prefill_lens]
    num_blocks = sum(blocks_per_seq) + 3
    order = torch.randperm(num_blocks, generator=generator).tolist()
    tables, used = [], 0
    for n in blocks_per_seq:
        tables.append(order[used:used + n])
        used += n
    width = max(blocks_per_seq) + 1
    steps = [_step(query_lens, prefill_lens, tables, width),
             _step([1] * 3, [n + 1 for n in prefill_lens], tables, width, padding_rows=2)]

    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    fused_caches = [torch.randn(shape, generator=generator).to(dtype).cuda() for _ in range(2)]
    separate_caches = [cache.clone() for cache in fused_caches]
    two_launch_caches = [cache.clone() for cache in fused_caches]
    sections = (num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim)
    for meta in steps:
        qkv = torch.randn(meta.positions.shape[0], sum(sections),
                          generator=generator).to(dtype).cuda()
        q, k, v = _split_qkv(qkv.clone(), num_heads, num_kv_heads, head_dim)
        assert rotary.kernel_cos_sin(q) is not None, "the fused path needs the Triton kernels"
        out_fused = fused(q, k, v, *fused_caches, meta, rotary)
        q, k, v = _split_qkv(qkv.clone(), num_heads, num_kv_heads, head_dim)
        out_separate = separate(q, k, v, *separate_caches, meta, rotary)
        q, k, v = _split_qkv(qkv.clone(), num_heads, num_kv_heads, head_dim)
        out_two = in_two(q, k, v, *two_launch_caches, meta, rotary)
        assert torch.equal(out_fused, out_separate), f"seed {SEED}, decode {meta.is_decode}"
        assert torch.equal(out_two, out_separate), f"seed {SEED}, decode {meta.is_decode}"
        for caches in (fused_caches, two_launch_caches):
            assert torch.equal(caches[0], separate_caches[0]), f"seed {SEED}"
            assert torch.equal(caches[1], separate_caches[1]), f"seed {SEED}"
