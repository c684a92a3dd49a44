"""The runtime's rules for the HLAPI's sampling knobs, as the peer defines them: the top-p decay
family (TensorRT-LLM's topPDecay / topPMin / topPResetIds) and the beam search diversity rate
(Li et al. 2016, the k-th child of a beam scores k * rate lower). Pure; no services."""

from __future__ import annotations

import pytest
import torch

from runtime_service.engine.beam_search import BeamSearch
from runtime_service.engine.request import SamplingParams
from runtime_service.model.sampler import decayed_top_p


def test_top_p_decays_after_each_token_to_its_floor_and_resets_on_the_reset_token():
    params = SamplingParams(temperature=1.0, top_p=0.8, top_p_decay=0.5, top_p_min=0.15,
                            top_p_reset_id=7)
    assert decayed_top_p(params, []) == 0.8
    assert decayed_top_p(params, [1]) == pytest.approx(0.4)
    assert decayed_top_p(params, [1, 2]) == pytest.approx(0.2)
    assert decayed_top_p(params, [1, 2, 3]) == pytest.approx(0.15)      # the floor
    assert decayed_top_p(params, [1, 2, 3, 7]) == pytest.approx(0.8)    # reset
    assert decayed_top_p(params, [1, 2, 3, 7, 4]) == pytest.approx(0.4)
    assert decayed_top_p(SamplingParams(top_p=0.8), [1, 2, 3]) == 0.8   # no decay by default


def row(values: dict[int, float], vocab: int = 6) -> torch.Tensor:
    out = torch.full((vocab,), -10.0)
    for token, value in values.items():
        out[token] = value
    return out


def two_beams(rate: float) -> BeamSearch:
    """Two running beams scored -0.1 and -0.2 (the first step runs without diversity, so both
    searches start alike)."""
    search = BeamSearch(2, prompt_len=3, max_length=100, end_ids=(5,))
    search.step(row({0: -0.1, 1: -0.2})[None])
    search.diversity_rate = rate
    return search


def test_without_diversity_one_beam_may_take_both_places():
    search = two_beams(0.0)
    choices = search.step(torch.stack([row({2: -0.1, 3: -0.2}), row({4: -0.5})]))
    assert [c.parent for c in choices] == [0, 0]


def test_a_diversity_rate_makes_a_beams_second_child_yield_to_another_beam():
    search = two_beams(1.0)
    choices = search.step(torch.stack([row({2: -0.1, 3: -0.2}), row({4: -0.5})]))
    assert sorted(c.parent for c in choices) == [0, 1]
    assert {(c.parent, c.token_id) for c in choices} == {(0, 2), (1, 4)}
