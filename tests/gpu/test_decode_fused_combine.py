"""The fused split-K decode (the last split to arrive merges) changes no bit against decode then
`_combine_kernel` (CUDA only).

Both paths run one decode binary and merge through one routine, so the outputs must be equal,
not merely close; a comparison with the plain-torch reference guards against both being wrong the
same way. Inputs are drawn anew on every run (the seed is printed on failure) and include what
the scheduler and the CUDA graphs produce: contexts of 1 to 2000 tokens, short contexts where most
splits get no keys, and padded rows (seq_len 1 on block 0). Outputs are poisoned first so an
unwritten element fails the check.
"""

from __future__ import annotations

import random

import pytest
import torch

from gpu.tiers import sweep
from support.seeds import module_seed

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
HEADS = [(32, 32), (32, 8)]                 # (num_heads, num_kv_heads): MHA, GQA
HEAD_IDS = ["mha", "gqa"]
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-5}
SEED = module_seed()
BLOCK_SIZE = 16
MAX_CONTEXT = 2000
NUM_BLOCKS = 256                            # block 0 is the padding rows' block
LENGTHS = [1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 128, 129, 200, 511, 1000, 1999, 2000]


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _draw_seq_lens(rng: random.Random, batch: int, num_splits: int) -> tuple[list[int], int]:
    """Lengths for `batch` rows, the last `num_padded` of them CUDA-graph padding (seq_len 1)."""
    num_padded = 0 if batch == 1 else max(1, batch // 4)
    lens = []
    for _ in range(batch - num_padded):
        kind = rng.random()
        if kind < 0.4:
            lens.append(rng.choice(LENGTHS))
        elif kind < 0.7:                    # short: most of the splits get no keys
            lens.append(rng.randint(1, min(MAX_CONTEXT, num_splits * 8)))
        else:
            lens.append(rng.randint(1, MAX_CONTEXT))
    return lens + [1] * num_padded, num_padded


def _tables(seq_lens: list[int], num_padded: int, generator: torch.Generator) -> torch.Tensor:
    """Each row's blocks drawn from the pool (repeats are harmless: attention only reads them);
    padded rows point at block 0 as the CUDA graphs leave them."""
    width = -(-MAX_CONTEXT // BLOCK_SIZE) + 1
    tables = torch.full((len(seq_lens), width), -1, dtype=torch.int32)
    for i, n in enumerate(seq_lens):
        blocks = -(-n // BLOCK_SIZE)
        tables[i, :blocks] = torch.randint(1, NUM_BLOCKS, (blocks,), generator=generator)
    if num_padded:
        tables[len(seq_lens) - num_padded:, 0] = 0
    return tables.to(DEVICE)


def _caches(num_kv_heads: int, head_dim: int, dtype: torch.dtype, generator: torch.Generator):
    shape = (NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator).to(dtype).to(DEVICE)
    v_cache = torch.randn(shape, generator=generator).to(dtype).to(DEVICE)
    return k_cache, v_cache


def _query(batch: int, num_heads: int, head_dim: int, dtype: torch.dtype,
           generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, num_heads, head_dim, generator=generator).to(dtype).to(DEVICE)


def _decode(q, k_cache, v_cache, tables, lens, num_splits, fused_combine, config=None):
    from runtime_service.model.kernels import paged_attention as pa

    out = torch.full_like(q, float("nan"))
    pa.decode(q, k_cache, v_cache, tables, lens, q.shape[-1] ** -0.5, num_splits, out=out,
              fused_combine=fused_combine, config=config)
    return out


def _counts_are_zero(device: torch.device) -> bool:
    from runtime_service.model.kernels import arrival_counts

    return not arrival_counts._counts[device].any().item()


@pytest.mark.parametrize("num_splits", sweep([1, 2, 8, 32], core=(1, 8)))
@pytest.mark.parametrize("batch", sweep([1, 3, 64], core=(3, 64)))
@pytest.mark.parametrize("head_dim", sweep([64, 128], core=(128,)))
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("dtype", sweep(DTYPES, core=(torch.bfloat16, torch.float32), ids=str))
def test_fused_combine_is_bit_identical_to_two_launches(dtype, heads, head_dim, batch,
                                                        num_splits):
    case_seed = SEED + 1000 * batch + 10 * num_splits + head_dim + heads[1]
    _check_fused_decode(dtype, heads, head_dim, batch, num_splits, case_seed)


# (block_n, num_warps, num_stages[, min_split_keys]): short and long key tiles, shallow and
# deep pipelines, splits of at least 100 keys (not whole tiles: rounded up) and 512.
LAUNCH_CONFIGS = [(64, 4, 2), (128, 8, 2), (32, 4, 3), (16, 2, 4), (32, 8, 4), (64, 4, 2, 100),
                  (16, 2, 2, 512)]


@pytest.mark.parametrize("config", LAUNCH_CONFIGS, ids=str)
@pytest.mark.parametrize("num_splits", sweep([1, 4], core=(4,)))
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("dtype", sweep(DTYPES, core=(torch.bfloat16,), ids=str))
def test_every_launch_config_matches_reference(dtype, heads, num_splits, config):
    """The launch shapes bench/bench_attention.py sweeps compute the same attention, and each
    keeps the fused merge bit-identical to the two-launch one."""
    from runtime_service.model.kernels import paged_attention as pa

    case_seed = SEED + 7 * num_splits + heads[1] + sum(config)
    _check_fused_decode(dtype, heads, 128, 64, num_splits, case_seed, pa.DecodeConfig(*config))


def _check_fused_decode(dtype, heads, head_dim: int, batch: int, num_splits: int,
                        case_seed: int, config=None) -> None:
    """One drawn case: the fused merge equals the two-launch one bit for bit, writes every
    output, leaves the arrival counts at 0 and agrees with the torch reference."""
    from runtime_service.model.kernels import paged_attention as pa

    num_heads, num_kv_heads = heads
    rng = random.Random(case_seed)
    generator = torch.Generator().manual_seed(case_seed)
    seq_lens, num_padded = _draw_seq_lens(rng, batch, num_splits)
    k_cache, v_cache = _caches(num_kv_heads, head_dim, dtype, generator)
    tables = _tables(seq_lens, num_padded, generator)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    q = _query(batch, num_heads, head_dim, dtype, generator)

    two_launches = _decode(q, k_cache, v_cache, tables, lens, num_splits, False, config)
    fused = _decode(q, k_cache, v_cache, tables, lens, num_splits, True, config)
    torch.cuda.synchronize()
    context = f"seed {SEED}, {config or 'default config'}, lens {seq_lens}"
    assert not fused.isnan().any(), f"unwritten output ({context})"
    assert torch.equal(fused, two_launches), context
    assert _counts_are_zero(q.device), context
    ref = pa.decode_reference(q, k_cache, v_cache, tables, lens, head_dim ** -0.5)
    assert _rel_err(fused, ref) < TOLERANCE[dtype], context


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_repeated_fused_launches_reset_their_counters(dtype):
    """Launches of different shapes share the per-device counts; each must leave them at 0."""
    rng = random.Random(SEED)
    generator = torch.Generator().manual_seed(SEED)
    k_cache, v_cache = _caches(8, 128, dtype, generator)
    for batch, num_splits in [(64, 8), (3, 32), (1, 32), (64, 32), (3, 2)]:
        seq_lens, num_padded = _draw_seq_lens(rng, batch, num_splits)
        tables = _tables(seq_lens, num_padded, generator)
        lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
        q = _query(batch, 32, 128, dtype, generator)
        expected = _decode(q, k_cache, v_cache, tables, lens, num_splits, fused_combine=False)
        for call in range(3):
            fused = _decode(q, k_cache, v_cache, tables, lens, num_splits, fused_combine=True)
            torch.cuda.synchronize()
            context = f"seed {SEED}, batch {batch}, splits {num_splits}, call {call}"
            assert torch.equal(fused, expected), context
            assert _counts_are_zero(q.device), context


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_fused_decode_in_cuda_graph_replays_with_changing_seq_lens(heads, dtype):
    from runtime_service.model.kernels import paged_attention as pa

    num_heads, num_kv_heads = heads
    batch, num_splits, head_dim = 8, 32, 128
    rng = random.Random(SEED + num_kv_heads)
    generator = torch.Generator().manual_seed(SEED + num_kv_heads)
    k_cache, v_cache = _caches(num_kv_heads, head_dim, dtype, generator)
    seq_lens, num_padded = _draw_seq_lens(rng, batch, num_splits)
    static_tables = _tables(seq_lens, num_padded, generator)
    static_lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    static_q = _query(batch, num_heads, head_dim, dtype, generator)
    static_out = torch.full_like(static_q, float("nan"))

    def step():
        pa.decode(static_q, k_cache, v_cache, static_tables, static_lens, head_dim ** -0.5,
                  num_splits, out=static_out)

    step()                                  # compiles, and sizes the counts before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for replay in range(5):
        seq_lens, num_padded = _draw_seq_lens(rng, batch, num_splits)
        static_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
        static_tables.copy_(_tables(seq_lens, num_padded, generator))
        static_q.copy_(_query(batch, num_heads, head_dim, dtype, generator))
        static_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        expected = _decode(static_q, k_cache, v_cache, static_tables, static_lens, num_splits,
                           fused_combine=False)
        context = f"seed {SEED}, replay {replay}, lens {seq_lens}"
        assert torch.equal(static_out, expected), context
        assert _counts_are_zero(static_q.device), context
        ref = pa.decode_reference(static_q, k_cache, v_cache, static_tables, static_lens,
                                  head_dim ** -0.5)
        assert _rel_err(static_out, ref) < TOLERANCE[dtype], context


def test_arrival_counts_grow_outside_capture_and_keep_outgrown_buffers(monkeypatch):
    from runtime_service.model.kernels import arrival_counts as ac

    monkeypatch.setattr(ac, "_counts", {})
    monkeypatch.setattr(ac, "_retired", [])
    device = torch.device(DEVICE, torch.cuda.current_device())
    small = ac.counts_for(device, 10)
    assert small.dtype == torch.int32 and not small.any()
    assert ac.counts_for(device, small.numel()) is small
    large = ac.counts_for(device, small.numel() + 1)
    assert large.numel() > small.numel() and not large.any()
    assert ac._retired == [small]      # graphs captured earlier still use it
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert ac.counts_for(device, 10) is large
    with pytest.raises(RuntimeError, match="before capturing"):
        ac.counts_for(device, large.numel() + 1)
