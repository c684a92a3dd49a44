"""Carrying (x, residual) through the layers, with each residual add done by the norm after it,
gives the same hidden states, bit for bit, as the plain block (h = h + attn(norm(h)); h = h +
mlp(norm(h))), and pipeline stages still hand each other the un-normed residual stream."""

from __future__ import annotations

import itertools

import pytest
import torch

from runtime_service.model.parallel import ParallelContext
from runtime_service.model.layers.attention import AttentionMetadata
from runtime_service.model.llama import LlamaModel
from runtime_service.format.model_config import ModelArgs

ARGS = ModelArgs(vocab_size=97, hidden_size=64, intermediate_size=160, num_layers=3, num_heads=4,
                 num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=64)
BLOCK_SIZE = 4
BLOCKS_PER_SEQ = 4
PROMPT_LENS = [5, 1, 9]


def _random_model(dtype: torch.dtype, layer_ids=range(ARGS.num_layers),
                  parallel: ParallelContext = ParallelContext(), seed: int = 0) -> LlamaModel:
    model = LlamaModel(ARGS, layer_ids, parallel)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.to(dtype).eval()


def _stage(full: LlamaModel, layer_ids: range, parallel: ParallelContext) -> LlamaModel:
    stage = _random_model(next(full.parameters()).dtype, layer_ids, parallel)
    names = stage.state_dict().keys()
    stage.load_state_dict({name: t for name, t in full.state_dict().items() if name in names})
    return stage


def _kv_caches(num_layers: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    shape = (len(PROMPT_LENS) * BLOCKS_PER_SEQ, BLOCK_SIZE, ARGS.num_kv_heads, ARGS.head_dim)
    return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
            for _ in range(num_layers)]


def _step_meta(context_lens: list[int], query_lens: list[int]) -> AttentionMetadata:
    """Sequence i holds context_lens[i] cached tokens, computes query_lens[i] more, and owns
    blocks i * BLOCKS_PER_SEQ onwards."""
    tables = [list(range(i * BLOCKS_PER_SEQ, (i + 1) * BLOCKS_PER_SEQ))
              for i in range(len(query_lens))]
    positions, slots, token_seq_lens = [], [], []
    for table, start, n in zip(tables, context_lens, query_lens):
        positions += range(start, start + n)
        slots += [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
                  for p in range(start, start + n)]
        token_seq_lens += [start + n] * n
    seq_lens = [c + n for c, n in zip(context_lens, query_lens)]
    return AttentionMetadata(
        positions=torch.tensor(positions), slot_mapping=torch.tensor(slots),
        query_start=torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor(tables, dtype=torch.int32),
        token_seq_lens=torch.tensor(token_seq_lens), query_lens_host=list(query_lens),
        seq_lens_host=seq_lens, block_size=BLOCK_SIZE)


def _unfused_forward(model: LlamaModel, tokens: torch.Tensor, meta: AttentionMetadata,
                     kv_caches) -> torch.Tensor:
    h = model.embed_tokens(tokens)
    for layer, (k_cache, v_cache) in zip(model.layers.values(), kv_caches):
        h = h + layer.attn(layer.input_norm(h), meta, k_cache, v_cache)
        h = h + layer.mlp(layer.post_attn_norm(h))
    return h


STEPS = [([0] * len(PROMPT_LENS), PROMPT_LENS), (PROMPT_LENS, [1] * len(PROMPT_LENS))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_residual_adds_give_the_unfused_hidden_states_bit_for_bit(dtype):
    model = _random_model(dtype)
    fused_caches = _kv_caches(ARGS.num_layers, dtype)
    plain_caches = _kv_caches(ARGS.num_layers, dtype)
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for context_lens, query_lens in STEPS:               # a prefill, then a decode step
            meta = _step_meta(context_lens, query_lens)
            tokens = torch.randint(0, ARGS.vocab_size, (sum(query_lens),), generator=generator)
            fused = model(tokens, meta, fused_caches)
            plain = _unfused_forward(model, tokens, meta, plain_caches)
            assert fused.dtype == dtype and fused.shape == (len(tokens), ARGS.hidden_size)
            assert torch.equal(fused, plain)
    for (k_fused, v_fused), (k_plain, v_plain) in zip(fused_caches, plain_caches):
        assert torch.equal(k_fused, k_plain) and torch.equal(v_fused, v_plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pipeline_stages_pass_the_unnormed_residual_stream(dtype):
    full = _random_model(dtype)
    first = _stage(full, range(0, 2), ParallelContext(pp_rank=0, pp_size=2))
    last = _stage(full, range(2, 3), ParallelContext(pp_rank=1, pp_size=2))
    meta = _step_meta([0] * len(PROMPT_LENS), PROMPT_LENS)
    tokens = torch.randint(0, ARGS.vocab_size, (sum(PROMPT_LENS),),
                           generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        whole = full(tokens, meta, _kv_caches(3, dtype))
        staged = last(first(tokens, meta, _kv_caches(2, dtype)), meta, _kv_caches(1, dtype))
    assert torch.equal(staged, whole)
