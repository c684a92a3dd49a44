"""The two-launch greedy pick against torch's argmax + log_softmax on fresh random logits."""

from __future__ import annotations

import pytest
import torch

from support.seeds import module_seed

pytestmark = pytest.mark.gpu

SEED = module_seed()


@pytest.mark.parametrize("rows", [1, 3, 64])
@pytest.mark.parametrize("vocab", [5, 1000, 2048, 32000, 128256])
def test_greedy_pick_equals_argmax_and_log_softmax(rows, vocab):
    from runtime_service.model.kernels.sampling import greedy_pick, greedy_pick_reference

    generator = torch.Generator(device="cuda").manual_seed(SEED + rows * vocab)
    logits = torch.randn(rows, vocab, generator=generator, device="cuda") * 4
    tokens, logprobs = greedy_pick(logits)
    ref_tokens, ref_logprobs = greedy_pick_reference(logits)
    assert torch.equal(tokens, ref_tokens), f"seed {SEED}"
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5,
                               msg=f"seed {SEED}")


def test_ties_go_to_the_lowest_index_across_chunks_and_minus_inf_is_skipped():
    from runtime_service.model.kernels.sampling import greedy_pick

    logits = torch.full((3, 5000), float("-inf"), device="cuda")
    logits[0, [4100, 2100, 4999]] = 3.0          # equal maxima in chunks 2, 1 and 2
    logits[1, [7, 3]] = 1.0                       # equal maxima in one chunk
    logits[2, 4999] = 0.0                         # the last element alone
    tokens, logprobs = greedy_pick(logits)
    assert tokens.tolist() == [2100, 3, 4999]
    expected = [-torch.log(torch.tensor(3.0)).item(), -torch.log(torch.tensor(2.0)).item(), 0.0]
    torch.testing.assert_close(logprobs.cpu(), torch.tensor(expected))


def test_a_row_view_with_a_stride_is_read_in_place():
    from runtime_service.model.kernels.sampling import greedy_pick, greedy_pick_reference

    wide = torch.randn(4, 3000, device="cuda")
    view = wide[:, :2500]
    tokens, logprobs = greedy_pick(view)
    ref_tokens, ref_logprobs = greedy_pick_reference(view)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5)
