"""Kiln's engine gives transformers' greedy tokens, token for token, across LLaMA shapes.

Every case runs the full path (loader -> executor -> scheduler -> paged attention -> sampler) on
random-weight models, fp32, for mixed prompt lengths in one batch. The same cases run on CUDA
when a GPU is present.
"""

from __future__ import annotations

import pytest
import torch

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from support.random_llama import hf_greedy, make_random_llama, random_prompts

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# CUDA cases left to the long GPU tier (tests/conftest.py): head size 64 sits between the
# head-128 shape Llama uses and the odd head size, which stay in the default tier.
GPU_LONG_CASES = {f"{test}[gqa_head64-cuda]" for test in (
    "test_greedy_batch_matches_transformers",
    "test_chunked_prefill_and_late_arrivals_match_transformers",
    "test_preemption_under_max_utilization_keeps_outputs")}

SHAPES = {
    "gqa_head64": dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=64),
    "mha_head128_tied": dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=2,
                             head_dim=128, tie_word_embeddings=True),
    "mqa": dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=1),
    "gqa_odd_head_dim": dict(hidden_size=72, num_attention_heads=3, num_key_value_heads=3,
                             head_dim=24),
    "llama3_rope": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                         "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64}),
    "linear_rope": dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                         "factor": 4.0}),
    "bias": dict(attention_bias=True, mlp_bias=True),
}

PROMPT_LENGTHS = (1, 5, 17, 40, 3)
NEW_TOKENS = 10


@pytest.fixture(scope="module", params=sorted(SHAPES))
def model_case(request, tmp_path_factory):
    folder = make_random_llama(tmp_path_factory.mktemp(request.param), **SHAPES[request.param])
    prompts = random_prompts(PROMPT_LENGTHS, vocab_size=320)
    expected = [hf_greedy(folder, p, NEW_TOKENS) for p in prompts]
    return folder, prompts, expected


def _greedy(max_new_tokens=NEW_TOKENS) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_batch_matches_transformers(model_case, device):
    folder, prompts, expected = model_case
    executor = Executor.from_folder(folder, ExecutorOptions(device=device)).start()
    try:
        got = executor.generate([Request(f"r{i}", p, _greedy()) for i, p in enumerate(prompts)])
    finally:
        executor.shutdown()
    assert [got[f"r{i}"] for i in range(len(prompts))] == expected


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_prefill_and_late_arrivals_match_transformers(model_case, device):
    """Tiny token budget forces chunked prefill; half the requests arrive mid-generation."""
    folder, prompts, expected = model_case
    options = ExecutorOptions(device=device, max_num_tokens=7, block_size=4)
    executor = Executor.from_folder(folder, options).start()
    try:
        early = [executor.submit(Request(f"r{i}", p, _greedy())) for i, p in enumerate(prompts[:2])]
        first = next(iter(early[0]))
        late = [executor.submit(Request(f"r{i}", p, _greedy()))
                for i, p in enumerate(prompts[2:], start=2)]
        outputs = [list(first.new_token_ids)]
        outputs[0] += [t for out in early[0] for t in out.new_token_ids]
        outputs += [[t for out in s for t in out.new_token_ids] for s in early[1:] + late]
    finally:
        executor.shutdown()
    assert outputs == expected


@pytest.mark.parametrize("device", DEVICES)
def test_preemption_under_max_utilization_keeps_outputs(model_case, device):
    folder, prompts, expected = model_case
    options = ExecutorOptions(device=device, block_size=4, kv_max_tokens=64,
                              policy="MAX_UTILIZATION", max_num_tokens=16)
    executor = Executor.from_folder(folder, options).start()
    try:
        got = executor.generate([Request(f"r{i}", p, _greedy()) for i, p in enumerate(prompts)])
        stats = executor.stats()
    finally:
        executor.shutdown()
    assert stats.num_preemptions > 0, "the pool was meant to be too small for all at once"
    assert stats.num_free_blocks == stats.num_total_blocks
    assert [got[f"r{i}"] for i in range(len(prompts))] == expected


def test_dynamic_ntk_rope_matches_transformers_past_max_positions(tmp_path):
    """Dynamic NTK rescales once a sequence outgrows max_position_embeddings."""
    folder = make_random_llama(
        tmp_path, max_position_embeddings=24,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    prompt = random_prompts([30], vocab_size=320)[0]
    expected = hf_greedy(folder, prompt, 8)
    executor = Executor.from_folder(folder, ExecutorOptions()).start()
    try:
        assert executor.build.max_seq_len == 48      # 24 positions x factor 2
        got = executor.generate([Request("r", prompt, _greedy(8))])["r"]
    finally:
        executor.shutdown()
    assert got == expected


@pytest.mark.gpu
def test_bf16_cuda_is_as_accurate_as_transformers_bf16(tmp_path):
    """bf16 on both sides, Kiln's fast path (Triton kernels, CUDA graphs) against transformers.

    Random weights give nearly flat distributions: transformers' own bf16 log-probabilities
    differ from its fp32 ones by up to ~1 on this model (measured on an H100), so bf16 tokens
    part at near-ties and cannot tell rounding from a bug. Accuracy can: on Kiln's greedy
    trajectories (decode path) and on transformers' greedy continuations (Kiln's prefill path,
    prompt_logprobs), Kiln's bf16 error against fp32 transformers must be of the size of
    transformers' own bf16 error. A wrong position, block or head is off by whole units."""
    from transformers import LlamaForCausalLM

    folder = make_random_llama(tmp_path, hidden_size=256, num_attention_heads=4,
                               num_key_value_heads=2, num_hidden_layers=4, vocab_size=512)
    prompts = random_prompts((8, 33, 100, 5, 17), vocab_size=512)
    bf16 = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).cuda().eval()
    fp32 = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).cuda().eval()

    def log_probs(model, tokens: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = model(torch.tensor([tokens], device="cuda")).logits[0].float()
        return logits.log_softmax(-1)[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])].cpu()

    executor = Executor.from_folder(folder, ExecutorOptions(device="cuda", dtype="bfloat16")).start()
    kiln_errors, hf_errors = [], []
    try:
        for i, prompt in enumerate(prompts):
            decoded = list(executor.submit(Request(f"d{i}", prompt, SamplingParams(
                max_new_tokens=16, ignore_eos=True, logprobs=True))))
            tokens = prompt + [t for o in decoded for t in o.new_token_ids]
            kiln = torch.tensor([lp for o in decoded for lp in o.new_logprobs])
            truth = log_probs(fp32, tokens)[len(prompt) - 1:]
            kiln_errors.append(kiln - truth)
            hf_errors.append(log_probs(bf16, tokens)[len(prompt) - 1:] - truth)
            continuation = prompt + hf_greedy(folder, prompt, 16, device="cuda",
                                              dtype=torch.bfloat16, model=bf16)
            scored = list(executor.submit(Request(f"p{i}", continuation, SamplingParams(
                max_new_tokens=1, prompt_logprobs=True))))
            truth = log_probs(fp32, continuation)
            kiln_errors.append(torch.tensor(scored[0].prompt_logprobs) - truth)
            hf_errors.append(log_probs(bf16, continuation) - truth)
    finally:
        executor.shutdown()
    kiln_error, hf_error = torch.cat(kiln_errors).abs(), torch.cat(hf_errors).abs()
    assert len(kiln_error) > 300
    assert kiln_error.median() <= 2 * hf_error.median() + 0.02, (kiln_error.median(),
                                                                 hf_error.median())
    assert kiln_error.max() <= 2 * hf_error.max() + 0.1, (kiln_error.max(), hf_error.max())
