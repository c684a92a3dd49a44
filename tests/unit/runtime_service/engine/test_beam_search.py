"""Beam search equals transformers' generate(num_beams=k) in sequences and scores.

Random-weight models make every beam step a close race; the end id is picked from the model's
own greedy output so that beams finish at different lengths and the finished-hypothesis rules
(length penalty, early stopping) decide the result.
"""

from __future__ import annotations

import pytest
import torch

from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import FinishReason, Request, SamplingParams
from support.random_llama import hf_greedy, make_random_llama, random_prompts

VOCAB = 320
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("beams"), vocab_size=VOCAB,
                             initializer_range=0.05)


@pytest.fixture(scope="module")
def hf_model(folder):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(folder)).eval()


def _hf_beams(model, prompt, k, end_id, length_penalty, early_stopping, n):
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=k, num_return_sequences=n,
                             max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=end_id,
                             pad_token_id=VOCAB - 1, length_penalty=length_penalty,
                             early_stopping=early_stopping, output_scores=True,
                             return_dict_in_generate=True)
    rows = out.sequences[:, len(prompt):].tolist()
    return rows, out.sequences_scores.tolist()


def _kiln_beams(executor, prompt, k, end_id, length_penalty, early_stopping, n, rid="r"):
    params = SamplingParams(max_new_tokens=NEW_TOKENS, beam_width=k, num_return_sequences=n,
                            end_id=end_id, length_penalty=length_penalty,
                            early_stopping=early_stopping)
    outputs = list(executor.submit(Request(rid, prompt, params)))
    final = [o for o in outputs if o.finish_reason is not None]
    return final, outputs


@pytest.fixture(scope="module")
def executor(folder):
    executor = Executor.from_folder(folder, ExecutorOptions(block_size=4)).start()
    yield executor
    executor.shutdown()


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("length_penalty, early_stopping",
                         [(1.0, True), (1.0, False), (0.5, "never"), (2.0, False)])
def test_sequences_and_scores_equal_transformers(folder, hf_model, executor, k, length_penalty,
                                                 early_stopping):
    for seed in (11, 12, 13):
        prompt = random_prompts([7], VOCAB, seed=seed)[0]
        end_id = hf_greedy(folder, prompt, 4, model=hf_model)[2]
        expected, scores = _hf_beams(hf_model, prompt, k, end_id, length_penalty,
                                     early_stopping, n=k)
        final, _ = _kiln_beams(executor, prompt, k, end_id, length_penalty, early_stopping, n=k)
        assert [o.sequence_index for o in final] == list(range(k))
        for out, row, score in zip(final, expected, scores):
            tokens = list(out.new_token_ids)
            assert tokens == row[:len(tokens)]
            assert all(t == VOCAB - 1 for t in row[len(tokens):]), "HF padded a longer beam"
            assert out.cumulative_logprob == pytest.approx(score, abs=1e-4)
        assert final[-1].finished and not any(o.finished for o in final[:-1])


def test_beam_width_one_is_greedy(folder, hf_model, executor):
    prompt = random_prompts([9], VOCAB, seed=3)[0]
    outputs = list(executor.submit(Request("g", prompt, SamplingParams(
        max_new_tokens=NEW_TOKENS, beam_width=1))))
    assert [t for o in outputs for t in o.new_token_ids] == hf_greedy(
        folder, prompt, NEW_TOKENS, model=hf_model)


def test_streaming_beams_send_whole_beam_snapshots_and_free_every_block(executor):
    prompt = random_prompts([6], VOCAB, seed=21)[0]
    final, outputs = _kiln_beams(executor, prompt, 3, -1, 1.0, True, n=2)
    snapshots = [o for o in outputs if o.finish_reason is None]
    assert snapshots and all(o.offset == 0 for o in snapshots)
    assert {o.sequence_index for o in snapshots} == {0, 1, 2}
    assert len(final) == 2 and all(o.finish_reason is FinishReason.LENGTH for o in final)
    assert all(len(o.new_token_ids) == NEW_TOKENS for o in final)
    stats = executor.stats()
    assert stats.num_free_blocks == stats.num_total_blocks and stats.num_live_requests == 0


def test_beams_share_prompt_blocks_instead_of_copying_them(folder):
    """A 32-token prompt in blocks of 4: four beams together hold far fewer than 4x8 blocks."""
    executor = Executor.from_folder(folder, ExecutorOptions(block_size=4))
    prompt = random_prompts([32], VOCAB, seed=5)[0]
    stream = executor.submit(Request("b", prompt, SamplingParams(
        max_new_tokens=NEW_TOKENS, beam_width=4, end_id=-1)))
    executor._drain_inbox()              # the loop thread is not started: step by hand
    executor.step()                      # prefill by the leader, then the first beam step
    executor.step()                      # every beam decodes once: partial blocks are copied
    group = executor._live["b"].beams
    held = {b for seq in group.seqs for b in seq.block_ids}
    assert len(group.seqs) == 4
    assert len(held) < 4 * 9
    assert all(seq.block_ids[:8] == group.seqs[0].block_ids[:8] for seq in group.seqs)
    executor.start()
    list(stream)
    executor.shutdown()


def test_beam_settings_are_checked(executor):
    with pytest.raises(FailedPrecondition, match="max_beam_width"):
        executor.submit(Request("x", [1, 2], SamplingParams(beam_width=8)))
    with pytest.raises(InvalidRequest, match="temperature"):
        executor.submit(Request("x", [1, 2], SamplingParams(beam_width=2, temperature=0.7)))
    with pytest.raises(InvalidRequest, match="num_return_sequences"):
        executor.submit(Request("x", [1, 2], SamplingParams(beam_width=2,
                                                            num_return_sequences=3)))


def test_preempted_beam_group_restarts_and_gives_the_same_result(folder, hf_model):
    executor = Executor.from_folder(folder, ExecutorOptions(
        block_size=4, kv_max_tokens=96, policy="MAX_UTILIZATION")).start()
    try:
        prompts = random_prompts([10, 12, 9], VOCAB, seed=8)
        expected = [_hf_beams(hf_model, p, 2, -1, 1.0, True, n=1)[0][0] for p in prompts]
        streams = [executor.submit(Request(f"r{i}", p, SamplingParams(
            max_new_tokens=NEW_TOKENS, beam_width=2, end_id=-1))) for i, p in enumerate(prompts)]
        results = [[o for o in s if o.finish_reason is not None][0] for s in streams]
        stats = executor.stats()
    finally:
        executor.shutdown()
    assert [list(r.new_token_ids) for r in results] == expected
    assert stats.num_free_blocks == stats.num_total_blocks
