"""Generation through the HLAPI surface on a real Kiln: positional orders, stop/bad words,
per-prompt configs, OutputConfig (log probs, logits, input in output), the result's future and
stream methods, and the peer's own example patterns."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from kiln.errors import Cancelled, InvalidArgument
from kiln.hlapi import OutputConfig, SamplingConfig
from kiln.hlapi.tokenizer import TokenizerBase
from support.random_llama import hf_greedy

PROMPT = [5, 6, 7]


def greedy(n: int, **fields) -> SamplingConfig:
    return SamplingConfig(end_id=-1, max_new_tokens=n, **fields)


def test_a_positional_sampling_config_is_read_as_the_sampling_config(llm, compat_model):
    out = llm.generate([PROMPT], greedy(3))[0]
    assert out.token_ids == hf_greedy(compat_model, PROMPT, 3)
    streamed = llm.generate_async(PROMPT, greedy(3), OutputConfig(), True)
    sizes = [len(step.token_ids) for step in streamed]
    assert sizes[-1] == 3 and sizes == sorted(sizes)
    with pytest.raises(InvalidArgument, match="streaming is generate_async's fourth"):
        llm.generate_async(PROMPT, True)


def test_bad_words_and_stop_words_keywords(llm, compat_model):
    first, second, third = hf_greedy(compat_model, PROMPT, 3)
    assert llm.generate([PROMPT], greedy(3), bad_words=[[first]])[0].token_ids[0] != first
    stopped = llm.generate([PROMPT], greedy(3), stop_words=[[second]])[0]
    assert stopped.token_ids == [first, second] and stopped.finish_reason == "stop"
    one_word = llm.generate_async(PROMPT, greedy(3), stop_words=[first, second]).result()
    assert one_word.token_ids == [first, second]          # a flat id list is one word


def test_per_prompt_config_lists(llm):
    results = llm.generate([PROMPT, [9, 8]], [greedy(2), greedy(4)])
    assert [len(r.token_ids) for r in results] == [2, 4]
    many = llm.generate_async([PROMPT, [9, 8]], greedy(2))
    assert isinstance(many, list) and [len(r.result().token_ids) for r in many] == [2, 2]
    per_config = llm.generate_async(PROMPT, [greedy(1), greedy(3)])
    assert [len(r.result().token_ids) for r in per_config] == [1, 3]
    with pytest.raises(InvalidArgument, match="one per prompt"):
        llm.generate([PROMPT, PROMPT, PROMPT], [greedy(1), greedy(2)])


def test_logits_are_sent_only_when_asked_and_match_transformers(llm, hf_model):
    plain = llm.generate([PROMPT], greedy(3))[0]
    assert plain.context_logits is None and plain.generation_logits is None
    asked = OutputConfig(return_log_probs=True, return_context_logits=True,
                         return_generation_logits=True)
    out = llm.generate([PROMPT], greedy(3), asked)[0]
    context, generation = out.context_logits, out.generation_logits
    assert context.shape == (len(PROMPT), 49152) and generation.shape == (3, 49152)
    with torch.no_grad():
        reference = hf_model(torch.tensor([PROMPT + out.token_ids])).logits[0].numpy()
    np.testing.assert_allclose(context, reference[:len(PROMPT)], atol=2e-3, rtol=0)
    np.testing.assert_allclose(generation, reference[len(PROMPT) - 1:-1], atol=2e-3, rtol=0)
    assert list(generation.argmax(-1)) == out.token_ids
    expected = torch.log_softmax(torch.from_numpy(generation.copy()), -1)
    chosen = expected[range(3), out.token_ids].tolist()
    assert out.log_probs == pytest.approx(chosen, abs=1e-3)


def test_exclude_input_from_output_false_puts_the_prompt_first(llm):
    out = llm.generate([PROMPT], greedy(2), OutputConfig(exclude_input_from_output=False))[0]
    assert out.token_ids[:3] == PROMPT and len(out.token_ids) == 5
    text = llm.generate(["Hello"], greedy(2), OutputConfig(exclude_input_from_output=False))[0]
    assert text.text.startswith("Hello")


def test_the_result_is_a_future_and_a_text_stream(llm):
    result = llm.generate_async("The sky is", greedy(4), streaming=True)
    pieces = [step.text_diff for step in result]
    assert "".join(pieces) == result.text and not result.running()
    assert result.exception() is None and not result.cancelled()
    assert not result.beam_search_enabled
    beams = llm.generate_async(PROMPT, greedy(3, beam_width=2)).result()
    assert beams.beam_search_enabled and len(beams.token_ids) == 2
    with pytest.raises(ValueError, match="text_diff"):
        beams.text_diff
    long = llm.generate_async(PROMPT, greedy(2000), streaming=True)
    next(long)                                  # the call is running once a chunk arrived
    long.cancel()
    assert long.cancelled() and long.exception(timeout=60) is not None


def test_cancel_right_after_submitting_cancels(llm):
    """cancel() before the gRPC call has started must still abort the request."""
    generation = llm.generate_async(PROMPT, greedy(2000))
    generation.cancel()
    assert generation.cancelled()
    assert isinstance(generation.exception(timeout=60), Cancelled)


def test_iterating_then_waiting_for_the_result_ends(llm):
    """The peer's example: `for output in generation: output.result(timeout=10)`; it used to
    spin forever once result() had drained the end."""
    generation = llm.generate_async(PROMPT, greedy(3))
    seen = []

    def consume():
        for output in generation:
            seen.append(output.result(timeout=10).token_ids)
    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and seen and len(seen[-1]) == 3


def test_default_sampling_config_with_a_tokenizer_base_subclass(llm):
    class Sized(TokenizerBase):
        eos_token_id, pad_token_id = 2, None

        def __len__(self):
            raise NotImplementedError("a protocol without a vocabulary size")

    shared, llm.tokenizer = llm.tokenizer, Sized()
    try:
        config = llm.get_default_sampling_config()
    finally:
        llm.tokenizer = shared
    assert (config.end_id, config.pad_id, config.max_new_tokens) == (2, 2, None)


def test_min_length_holds_off_the_end_token(llm, compat_model):
    first = hf_greedy(compat_model, PROMPT, 1)[0]
    assert llm.generate([PROMPT], SamplingConfig(end_id=first, max_new_tokens=6))[0] \
        .token_ids == [first]
    held = llm.generate([PROMPT], SamplingConfig(end_id=first, max_new_tokens=6,
                                                 min_length=3))[0]
    assert len(held.token_ids) >= 3 and first not in held.token_ids[:2]


def test_top_p_decayed_to_its_floor_samples_the_most_likely_token(llm, compat_model):
    """top_p 1.0 decays by 1e-3 after the first token, to the 1e-6 floor: the first token is a
    free draw, every later one is the nucleus' single most likely token."""
    config = SamplingConfig(end_id=-1, max_new_tokens=4, temperature=1.0, top_p=1.0,
                            top_p_decay=1e-3, top_p_min=1e-6, random_seed=11)
    tokens = llm.generate([PROMPT], config)[0].token_ids
    assert tokens[1:] == hf_greedy(compat_model, PROMPT + tokens[:1], 3)


def test_beam_search_diversity_and_never_early_stopping_run(llm):
    for config in (greedy(4, beam_width=2, beam_search_diversity_rate=0.5),
                   greedy(4, beam_width=2, early_stopping=5)):
        out = llm.generate([PROMPT], config)[0]
        assert len(out.token_ids) == 2 and all(len(b) == 4 for b in out.token_ids)


def test_save_overwrites_an_existing_folder(llm, tmp_path):
    from kiln.engine_build import local_engine_key
    target = tmp_path / "engine"
    llm.save(target)
    (target / "notes.txt").write_text("mine")
    llm.save(target)
    assert local_engine_key(str(target)) == llm.engine_key
    assert (target / "notes.txt").read_text() == "mine"


def test_async_streaming_with_the_peer_signature(llm):
    async def collect():
        return [len(o.token_ids) async for o in llm.generate_async(PROMPT, greedy(3),
                                                                   streaming=True)]
    assert asyncio.run(collect())[-1] == 3
