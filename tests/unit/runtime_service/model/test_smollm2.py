"""A real model: SmolLM2-135M-Instruct gives transformers' greedy tokens through Kiln's engine."""

from __future__ import annotations

import pytest
import torch

from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import FinishReason, Request, SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "List three colors:",
]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir)).eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def executor(smollm2_dir):
    executor = Executor.from_folder(smollm2_dir, ExecutorOptions()).start()
    yield executor
    executor.shutdown()


def _hf_greedy(hf_model, ids: list[int], new_tokens: int) -> list[int]:
    tokenizer, model = hf_model
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return out[0, len(ids):].tolist()


def test_greedy_tokens_and_text_match_transformers(hf_model, executor):
    tokenizer, _ = hf_model
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                         add_generation_prompt=True, tokenize=False)
    prompts = PROMPTS + [chat]
    ids = [tokenizer(p).input_ids for p in prompts]
    streams = [executor.submit(Request(f"p{i}", p, SamplingParams(max_new_tokens=NEW_TOKENS)))
               for i, p in enumerate(ids)]
    results = [list(s) for s in streams]
    for prompt_ids, outputs in zip(ids, results):
        tokens = [t for o in outputs for t in o.new_token_ids]
        text = "".join(o.new_text for o in outputs)
        expected = _hf_greedy(hf_model, prompt_ids, NEW_TOKENS)
        assert tokens == expected
        assert text == tokenizer.decode(expected, skip_special_tokens=True)
    assert "Paris" in "".join(o.new_text for o in results[0])


def test_stop_string_ends_generation_and_trims_text(hf_model, executor):
    tokenizer, _ = hf_model
    ids = tokenizer(PROMPTS[0]).input_ids
    outputs = list(executor.submit(Request("stop", ids, SamplingParams(
        max_new_tokens=NEW_TOKENS, stop_strings=("answer",)))))
    text = "".join(o.new_text for o in outputs)
    full = tokenizer.decode(_hf_greedy(hf_model, ids, NEW_TOKENS), skip_special_tokens=True)
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert text == full[:full.index("answer")]


@pytest.mark.parametrize("k", [2, 4])
def test_beam_search_matches_transformers(hf_model, executor, k):
    tokenizer, model = hf_model
    ids = tokenizer(PROMPTS[1]).input_ids
    with torch.no_grad():
        prompt = torch.tensor([ids])
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=k,
                             num_return_sequences=k, max_new_tokens=6, do_sample=False,
                             length_penalty=1.0, early_stopping=True, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.eos_token_id)
    outputs = [o for o in executor.submit(Request(f"beam{k}", ids, SamplingParams(
        max_new_tokens=6, beam_width=k, num_return_sequences=k, early_stopping=True)))
        if o.finish_reason is not None]
    for out_row, score, ours in zip(out.sequences[:, len(ids):].tolist(),
                                    out.sequences_scores.tolist(), outputs):
        assert list(ours.new_token_ids) == out_row[:len(ours.new_token_ids)]
        assert ours.cumulative_logprob == pytest.approx(score, abs=1e-4)
