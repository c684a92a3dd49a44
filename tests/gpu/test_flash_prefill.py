"""Flash prefill (kernels/flash_prefill.py) against the references and the paged kernel, on CUDA.

A step of one sequence: its new tokens through torch's flash kernel, its cached context paged in
after by log-sum-exp. Checked on fresh random inputs (seed printed on failure): flash alone
against a float32 causal reference (output and log-sum-exp), the merged result against the paged
prefill with and without context, inside a CUDA graph whose context changes at replay, and the
engine's greedy tokens against the paged backend's.
"""

from __future__ import annotations

import pytest
import torch

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from support.random_llama import make_random_llama, random_prompts
from support.seeds import module_seed

pytestmark = pytest.mark.gpu

SEED = module_seed()
BLOCK_SIZE = 16
HEADS = [(8, 2, 128), (4, 4, 64)]        # (query heads, kv heads, head dim)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _sequence(new: int, context: int, heads, generator, width_blocks: int = 0):
    """q [new, Hq, D]; caches holding context + new tokens on shuffled blocks; the new tokens'
    k and v rows [new, Hkv, D] as the caches hold them; table, query_start, seq_lens."""
    num_heads, num_kv_heads, head_dim = heads
    seq_len = context + new
    blocks = max(-(-seq_len // BLOCK_SIZE), width_blocks)
    num_blocks = blocks + 3
    order = torch.randperm(num_blocks, generator=generator)[:blocks]
    table = order.to(torch.int32).view(1, blocks).cuda()
    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator).to(torch.bfloat16).cuda()
    v_cache = torch.randn(shape, generator=generator).to(torch.bfloat16).cuda()
    positions = torch.arange(context, seq_len, device="cuda")
    slots = table[0, positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE
    k_new, v_new = k_cache.flatten(0, 1)[slots], v_cache.flatten(0, 1)[slots]
    q = torch.randn(new, num_heads, head_dim, generator=generator).to(torch.bfloat16).cuda()
    starts = torch.tensor([0, new], dtype=torch.int32, device="cuda")
    lens = torch.tensor([seq_len], dtype=torch.int32, device="cuda")
    return q, k_cache, v_cache, k_new, v_new, table, starts, lens


@pytest.mark.parametrize("kernel", ["cudnn", "flash"])
@pytest.mark.parametrize("heads", HEADS, ids=str)
@pytest.mark.parametrize("tokens", [2, 37, 300])
def test_causal_flash_matches_the_float32_reference_with_its_log_sum_exp(tokens, heads, kernel,
                                                                          monkeypatch):
    from runtime_service.model.kernels import flash_prefill as fp

    generator = torch.Generator().manual_seed(SEED + tokens)
    q, _, _, k, v, *_ = _sequence(tokens, 0, heads, generator)
    if kernel == "cudnn" and fp.fused_kernel(q, k) != "cudnn":
        pytest.skip(f"no cuDNN attention for heads {heads} on this device")
    monkeypatch.setitem(fp._kernel_for_shape, fp.shape_key(q, k), kernel)
    scale = heads[2] ** -0.5
    out, lse = fp.causal_flash(q, k, v, scale)
    ref, ref_lse = fp.causal_attention_reference(q, k, v, scale)
    assert out.shape == q.shape and lse.shape[0] == heads[0] and lse.shape[1] >= tokens
    assert _rel_err(out, ref) < 1e-2, f"seed {SEED}"
    assert (lse[:, :tokens] - ref_lse).abs().max().item() < 2e-2, f"seed {SEED}"


@pytest.mark.parametrize("heads", HEADS, ids=str)
@pytest.mark.parametrize("new, context", [(37, 0), (1, 40), (100, 1), (64, 333), (300, 16)])
def test_flash_prefill_equals_the_paged_prefill_with_and_without_context(new, context, heads):
    from runtime_service.model.kernels import flash_prefill as fp
    from runtime_service.model.kernels import paged_attention as pa

    generator = torch.Generator().manual_seed(SEED + new * 1000 + context)
    q, k_cache, v_cache, k, v, table, starts, lens = _sequence(new, context, heads, generator)
    scale = heads[2] ** -0.5
    out = fp.flash_prefill(q, k, v, k_cache, v_cache, table, starts, lens, new, scale)
    ref = pa.prefill_reference(q, k_cache, v_cache, table, starts, lens, scale)
    paged = pa.prefill(q, k_cache, v_cache, table, starts, lens, new, scale)
    assert _rel_err(out, ref) < 1e-2, f"seed {SEED}"
    assert _rel_err(out, paged) < 1e-2, f"seed {SEED}"


def test_in_a_cuda_graph_the_context_is_read_at_replay():
    """Captured once for 64 rows; replayed for prompts of other lengths and contexts, written
    into the same device tensors, with the rows past the prompt as padding."""
    from runtime_service.model.kernels import flash_prefill as fp
    from runtime_service.model.kernels import paged_attention as pa

    heads = HEADS[0]
    bucket, width = 64, 40
    generator = torch.Generator().manual_seed(SEED)
    q, k_cache, v_cache, k, v, table, starts, lens = _sequence(bucket, 0, heads, generator,
                                                               width_blocks=width)
    scale = heads[2] ** -0.5
    fp.flash_prefill(q, k, v, k_cache, v_cache, table, starts, lens, bucket, scale)   # compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fp.flash_prefill(q, k, v, k_cache, v_cache, table, starts, lens, bucket, scale)
    for new, context in ((64, 0), (50, 0), (30, 200), (1, 17), (64, 512)):
        seq_len = context + new
        positions = torch.arange(context, seq_len, device="cuda")
        slots = table[0, positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE
        q.copy_(torch.randn(q.shape, generator=generator).to(q.dtype))
        k[:new] = k_cache.flatten(0, 1)[slots]
        v[:new] = v_cache.flatten(0, 1)[slots]
        starts.copy_(torch.tensor([0, new], dtype=torch.int32))
        lens.copy_(torch.tensor([seq_len], dtype=torch.int32))
        graph.replay()
        ref = pa.prefill_reference(q[:new], k_cache, v_cache, table, starts, lens, scale)
        assert _rel_err(out[:new], ref) < 1e-2, f"seed {SEED}, new {new}, context {context}"


def _generate_one_at_a_time(folder, prompts, backend):
    """Each prompt alone (so every prefill is a step of one sequence), greedy, with the top two
    log-probabilities; block reuse on, so a repeated prefix prefills after cached context."""
    executor = Executor.from_folder(folder, ExecutorOptions(
        device="cuda", dtype="bfloat16", block_size=BLOCK_SIZE, max_num_tokens=96,
        enable_block_reuse=True, attention_backend=backend)).start()
    params = SamplingParams(max_new_tokens=12, min_new_tokens=12, end_id=-1, logprobs=True,
                            top_logprobs=2)
    try:
        results = []
        for i, prompt in enumerate(prompts):
            outputs = list(executor.submit(Request(f"r{i}", prompt, params)))
            results.append(([t for o in outputs for t in o.new_token_ids],
                             [top for o in outputs for top in o.new_top_logprobs]))
        return results, executor
    finally:
        executor.shutdown()


def test_the_engine_with_flash_prefill_gives_the_paged_backends_tokens(tmp_path, monkeypatch):
    from runtime_service.model.kernels import flash_prefill as fp

    folder = make_random_llama(tmp_path, hidden_size=256, num_attention_heads=8,
                               num_key_value_heads=2, num_hidden_layers=3, vocab_size=512)
    calls = []
    real = fp.flash_prefill
    monkeypatch.setattr(fp, "flash_prefill", lambda *a, **k: calls.append(1) or real(*a, **k))
    # 150 tokens: chunks of 96 and 54, the second after 96 of context; the last prompt repeats
    # the first one's 64-token prefix (a prefix-cache hit, then a graph prefill with context).
    prompts = random_prompts((5, 40, 150, 64), vocab_size=512)
    prompts.append(prompts[3] + random_prompts((20,), vocab_size=512)[0])
    flash, executor = _generate_one_at_a_time(folder, prompts, "triton-flash")
    assert executor.runner.prefill_graphs is not None and calls, "the flash path never ran"
    paged, _ = _generate_one_at_a_time(folder, prompts, "triton")
    checked = 0
    for (tokens, _), (ref_tokens, ref_top) in zip(flash, paged):
        decisive = [top[0][1] - top[1][1] >= 1.0 for top in ref_top]   # bf16: see test_triton_engine
        until = decisive.index(False) if False in decisive else len(decisive)
        assert tokens[:until] == ref_tokens[:until], f"prompt of {len(tokens)}"
        checked += until
    assert checked >= len(prompts)


def test_auto_on_hopper_takes_flash_for_long_prefills_only_and_gives_the_paged_tokens(
        tmp_path, monkeypatch):
    from runtime_service.model.kernels import flash_prefill as fp
    from runtime_service.model.layers import attention_triton as at

    if not at.auto_uses_flash(torch.cuda.get_device_capability(), 64):
        pytest.skip("auto takes flash on Hopper only")
    folder = make_random_llama(tmp_path, hidden_size=256, num_attention_heads=4,
                               num_key_value_heads=2, num_hidden_layers=2, vocab_size=512,
                               max_position_embeddings=2048)
    rows = []
    real = fp.flash_prefill
    monkeypatch.setattr(fp, "flash_prefill",
                        lambda q, *a, **k: rows.append(q.shape[0]) or real(q, *a, **k))
    prompts = random_prompts((700, 100, 530), vocab_size=512)

    def generate(backend):
        executor = Executor.from_folder(folder, ExecutorOptions(
            device="cuda", dtype="bfloat16", block_size=BLOCK_SIZE, max_num_tokens=1024,
            attention_backend=backend)).start()
        params = SamplingParams(max_new_tokens=8, min_new_tokens=8, end_id=-1, logprobs=True,
                                top_logprobs=2)
        try:
            layer = next(iter(executor.runner.model.layers.values()))
            assert layer.attn.backend.flash_min_rows == (at.AUTO_FLASH_MIN_ROWS
                                                         if backend == "auto" else 0)
            return [([t for o in outs for t in o.new_token_ids],
                     [top for o in outs for top in o.new_top_logprobs])
                    for outs in (list(executor.submit(Request(f"r{i}", p, params)))
                                 for i, p in enumerate(prompts))]
        finally:
            executor.shutdown()

    auto = generate("auto")
    assert rows and min(rows) >= at.AUTO_FLASH_MIN_ROWS, rows      # long steps only
    paged = generate("triton")
    for (tokens, _), (ref_tokens, ref_top) in zip(auto, paged):
        decisive = [top[0][1] - top[1][1] >= 1.0 for top in ref_top]   # bf16: see test_triton_engine
        until = decisive.index(False) if False in decisive else len(decisive)
        assert tokens[:until] == ref_tokens[:until], f"prompt of {len(tokens)}"
