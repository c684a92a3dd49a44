"""The batched sampler on constructed logits: greedy, seeds, filters, penalties, bans, logprobs."""

import math

import pytest
import torch

from runtime_service.engine.request import Request, SamplingParams
from runtime_service.model.sampler import (apply_bans, apply_penalties, banned_tokens,
                                     build_sampling_batch, filter_logits, sample)
from runtime_service.engine.sequence import Sequence

CPU = torch.device("cpu")


def make_seq(prompt=(1, 2, 3), output=(), **sampling):
    sampling.setdefault("max_new_tokens", 64)
    seq = Sequence(Request("r", list(prompt), SamplingParams(**sampling)), max_seq_len=1024)
    seq.token_ids.extend(output)
    return seq


def batch_of(seqs, end_ids=()):
    return build_sampling_batch(seqs, lambda seq: tuple(end_ids), CPU)


def draw(logits, seqs, end_ids=()):
    """Samples one token per row; `logits` is one row (shared by every seq) or [B, V]."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    if logits.dim() == 1:
        logits = logits.expand(len(seqs), -1).clone()
    return sample(logits, batch_of(seqs, end_ids))


def draws_over_seeds(logits, num_seeds=400, **sampling):
    seqs = [make_seq(seed=seed, **sampling) for seed in range(num_seeds)]
    return draw(logits, seqs).token_ids.tolist()


def logits_from_probs(probs):
    return torch.tensor(probs, dtype=torch.float64).log().float()


# ---- greedy ------------------------------------------------------------------------------------

def test_greedy_rows_pick_the_argmax():
    logits = torch.randn(16, 100, generator=torch.Generator().manual_seed(0))
    out = draw(logits, [make_seq(seed=i) for i in range(16)])
    assert out.token_ids.tolist() == logits.argmax(dim=-1).tolist()


def test_top_k_one_is_greedy_at_any_temperature():
    logits = torch.randn(32, 50, generator=torch.Generator().manual_seed(1))
    out = draw(logits, [make_seq(seed=i, temperature=5.0, top_k=1) for i in range(32)])
    assert out.token_ids.tolist() == logits.argmax(dim=-1).tolist()


def test_greedy_and_sampled_rows_mix_in_one_batch():
    logits = torch.zeros(4, 10)
    logits[:, 7] = 1.0
    seqs = [make_seq(seed=i, temperature=(0.0 if i % 2 == 0 else 50.0)) for i in range(4)]
    tokens = draw(logits, seqs).token_ids.tolist()
    assert tokens[0] == tokens[2] == 7


# ---- seeds -------------------------------------------------------------------------------------

def test_seeded_draws_repeat_exactly():
    logits = torch.randn(64, 200, generator=torch.Generator().manual_seed(2))
    seqs = [make_seq(seed=1000 + i, temperature=1.3, top_p=0.95) for i in range(64)]
    first = draw(logits, seqs).token_ids.tolist()
    second = draw(logits, seqs).token_ids.tolist()
    assert first == second


def test_seeded_draw_is_the_same_alone_or_in_a_batch():
    generator = torch.Generator().manual_seed(3)
    for seed in range(40):
        row = torch.randn(1, 64, generator=generator)
        target = make_seq(seed=seed, temperature=1.0, top_k=20, output=(5, 6))
        alone = draw(row, [target]).token_ids.item()
        others = [make_seq(seed=seed + 1, temperature=0.7, top_p=0.8),
                  make_seq(),                                     # greedy
                  make_seq(seed=seed, temperature=2.0, min_p=0.1, repetition_penalty=1.3)]
        logits = torch.cat([torch.randn(1, 64, generator=generator), row,
                            torch.randn(2, 64, generator=generator)])
        batch = [others[0], target, others[1], others[2]]
        assert draw(logits, batch).token_ids[1].item() == alone


def test_different_seeds_give_different_draws():
    tokens = draws_over_seeds(torch.zeros(100), num_seeds=300, temperature=1.0)
    assert len(set(tokens)) > 60


def test_the_draw_depends_on_the_output_position():
    seqs = [make_seq(seed=7, temperature=1.0, output=(9,) * n) for n in range(50)]
    tokens = draw(torch.zeros(100), seqs).token_ids.tolist()
    assert len(set(tokens)) > 20


# ---- filters -----------------------------------------------------------------------------------

SCRAMBLED = [3, 0, 7, 5, 1, 6, 2, 4]       # token id of the i-th most likely token


def scrambled_logits(probs):
    """Puts the i-th probability on token SCRAMBLED[i], so order is not index order."""
    assert len(probs) == len(SCRAMBLED)
    ordered = [0.0] * len(probs)
    for rank, token in enumerate(SCRAMBLED):
        ordered[token] = probs[rank]
    return logits_from_probs(ordered)


PROBS = [0.30, 0.22, 0.16, 0.12, 0.09, 0.06, 0.03, 0.02]


@pytest.mark.parametrize("sampling, kept", [
    (dict(top_k=3), 3),
    (dict(top_k=8), 8),
    (dict(top_p=0.6), 3),          # mass before: 0, .30, .52 | .68
    (dict(top_p=0.5), 2),
    (dict(top_p=0.01), 1),
    (dict(min_p=0.5), 3),          # floor .15
    (dict(min_p=0.35), 4),         # floor .105
    (dict(top_k=5, top_p=0.6), 3),
    (dict(top_k=2, min_p=0.01), 2),
])
def test_filters_never_emit_a_token_outside_their_set(sampling, kept):
    allowed = set(SCRAMBLED[:kept])
    tokens = draws_over_seeds(scrambled_logits(PROBS), temperature=1.0, **sampling)
    assert set(tokens) == allowed


def test_filters_treat_tied_tokens_alike():
    probs = [0.25, 0.25, 0.25, 0.1, 0.1, 0.05]         # three tied leaders
    logits = logits_from_probs(probs)
    for sampling in (dict(top_k=3), dict(top_p=0.6), dict(min_p=0.9)):
        assert set(draws_over_seeds(logits, temperature=1.0, **sampling)) == {0, 1, 2}
    probs = [0.4, 0.4, 0.1, 0.1]                        # two tied at the top, then a tied tail
    assert set(draws_over_seeds(logits_from_probs(probs), top_p=0.5, temperature=1.0)) == {0, 1}
    assert set(draws_over_seeds(logits_from_probs(probs), min_p=0.2, temperature=1.0)) == \
        {0, 1, 2, 3}


def test_filter_logits_keeps_the_most_likely_token_even_when_everything_is_filtered():
    logits = scrambled_logits(PROBS)[None, :]
    out = filter_logits(logits, torch.tensor([0]), torch.tensor([1e-9]), torch.tensor([1.0]))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [SCRAMBLED[0]]
    assert out[0, SCRAMBLED[0]] == logits[0, SCRAMBLED[0]]


def reference_kept(probs, top_k, top_p, min_p):
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    if top_k > 0:
        order = order[:top_k]
    total = sum(probs[i] for i in order)
    renormalized = [probs[i] / total for i in order]
    kept, mass = [], 0.0
    for rank, (token, p) in enumerate(zip(order, renormalized)):
        if rank == 0 or (mass < top_p and p >= min_p * renormalized[0]):
            kept.append(token)
        mass += p
    return set(kept), renormalized


def test_filter_logits_matches_a_reference_on_random_rows():
    generator = torch.Generator().manual_seed(4)
    rows, settings = [], []
    for _ in range(200):
        rows.append(torch.randn(40, generator=generator, dtype=torch.float64) * 2)
        settings.append((int(torch.randint(0, 12, (), generator=generator)),
                         float(torch.rand((), generator=generator)) * 0.9 + 0.1,
                         float(torch.rand((), generator=generator)) * 0.3))
    logits = torch.stack(rows).float()
    top_k = torch.tensor([s[0] for s in settings])
    top_p = torch.tensor([s[1] for s in settings], dtype=torch.float32)
    min_p = torch.tensor([s[2] for s in settings], dtype=torch.float32)
    out = filter_logits(logits, top_k, top_p, min_p)
    for row, (k, p, m) in enumerate(settings):
        probs = logits[row].double().softmax(-1).tolist()
        kept, renormalized = reference_kept(probs, k, p, m)
        cumulative = [sum(renormalized[:i]) for i in range(len(renormalized))]
        if any(abs(c - p) < 1e-4 for c in cumulative) or \
                any(abs(q - m * renormalized[0]) < 1e-4 for q in renormalized):
            continue                                    # too close to a boundary for float32
        got = set(torch.isfinite(out[row]).nonzero().flatten().tolist())
        assert got == kept, (k, p, m)
        assert torch.equal(out[row][list(kept)], logits[row][list(kept)])


def frequencies(tokens, vocab):
    counts = [0] * vocab
    for token in tokens:
        counts[token] += 1
    return [c / len(tokens) for c in counts]


@pytest.mark.parametrize("sampling", [dict(top_k=3), dict(top_p=0.6), dict(min_p=0.45)])
def test_filtered_distribution_is_proportional_within_the_kept_set(sampling):
    num_draws = 3000
    tokens = draws_over_seeds(scrambled_logits(PROBS), num_seeds=num_draws, temperature=1.0,
                              **sampling)
    kept = SCRAMBLED[:3]
    total = sum(PROBS[:3])
    observed = frequencies(tokens, len(PROBS))
    for rank, token in enumerate(kept):
        assert observed[token] == pytest.approx(PROBS[rank] / total, abs=0.04)


def test_temperature_reshapes_the_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    for temperature in (0.5, 2.0):
        tokens = draws_over_seeds(logits, num_seeds=3000, temperature=temperature)
        expected = (logits / temperature).softmax(-1).tolist()
        for got, want in zip(frequencies(tokens, 4), expected):
            assert got == pytest.approx(want, abs=0.04)


# ---- penalties ---------------------------------------------------------------------------------

def penalized(logits_row, seqs_row_index, seqs, end_ids=()):
    batch = batch_of(seqs, end_ids)
    logits = torch.as_tensor(logits_row, dtype=torch.float32).expand(len(seqs), -1).clone()
    return apply_penalties(logits, batch)[seqs_row_index].tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = [2.0, -2.0, 3.0, -1.0, 4.0, -4.0]
    seq = make_seq(prompt=(0, 1), output=(2, 3, 2), repetition_penalty=2.0)
    got = penalized(logits, 0, [seq])
    assert got == pytest.approx([1.0, -4.0, 1.5, -2.0, 4.0, -4.0])


def test_repetition_penalty_below_one_rewards_seen_tokens():
    seq = make_seq(prompt=(1,), output=(2,), repetition_penalty=0.5)
    assert penalized([1.0, 2.0, -2.0], 0, [seq]) == pytest.approx([1.0, 4.0, -1.0])


def test_repetition_penalty_reaches_token_zero_in_a_padded_batch():
    # Row 0 sees fewer tokens than row 1, so its seen list is padded; token 0 must still count.
    short = make_seq(prompt=(0,), output=(4,), repetition_penalty=2.0)
    long = make_seq(prompt=(1, 2, 3), output=(5, 6, 7), repetition_penalty=2.0)
    logits = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert penalized(logits, 0, [short, long]) == pytest.approx(
        [1.0, 2.0, 2.0, 2.0, 1.0, 2.0, 2.0, 2.0])
    assert penalized(logits, 1, [short, long]) == pytest.approx(
        [2.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0])


def test_presence_and_frequency_penalties_count_output_tokens_only():
    logits = [1.0] * 8
    seq = make_seq(prompt=(6, 2, 2), output=(2, 2, 2, 5), presence_penalty=0.5,
                   frequency_penalty=0.25)
    got = penalized(logits, 0, [seq])
    expected = [1.0] * 8
    expected[2] = 1.0 - 0.25 * 3 - 0.5
    expected[5] = 1.0 - 0.25 * 1 - 0.5
    assert got == pytest.approx(expected)


def test_penalties_apply_only_to_their_own_row():
    plain = make_seq(prompt=(0, 1), output=(1, 2))
    penalized_seq = make_seq(prompt=(0, 1), output=(1, 2), repetition_penalty=3.0,
                             presence_penalty=1.0, frequency_penalty=1.0)
    logits = [3.0, 3.0, 3.0, 3.0]
    assert penalized(logits, 0, [plain, penalized_seq]) == pytest.approx(logits)
    assert penalized(logits, 1, [plain, penalized_seq]) == pytest.approx([1.0, -1.0, -1.0, 3.0])


def test_a_penalty_can_change_the_greedy_choice():
    logits = torch.tensor([[0.0, 5.0, 4.0]])
    assert draw(logits, [make_seq(prompt=(0,), output=(1,))]).token_ids.item() == 1
    assert draw(logits, [make_seq(prompt=(0,), output=(1,), repetition_penalty=2.0)]).token_ids.item() == 2
    assert draw(logits, [make_seq(prompt=(0,), output=(1,), presence_penalty=2.0)]).token_ids.item() == 2


# ---- bans --------------------------------------------------------------------------------------

def test_banned_tokens_single_and_multi_token_bad_words():
    params = SamplingParams(bad_token_ids=((9,), (4, 5, 6), (7, 8)))
    assert banned_tokens([1, 2, 3], 0, params, ()) == [9]
    assert sorted(banned_tokens([1, 4, 5], 1, params, ())) == [6, 9]
    assert sorted(banned_tokens([1, 5], 1, params, ())) == [9]          # only half the prefix
    assert sorted(banned_tokens([4, 5, 7], 1, params, ())) == [8, 9]
    assert sorted(banned_tokens([5], 0, params, ())) == [9]             # shorter than the prefix


def test_end_ids_and_single_token_stops_are_banned_before_min_new_tokens():
    params = SamplingParams(min_new_tokens=2, stop_token_ids=((11,), (12, 13)))
    assert sorted(banned_tokens([1, 2], 0, params, (0, 2))) == [0, 2, 11]
    assert sorted(banned_tokens([1, 2, 3], 1, params, (0, 2))) == [0, 2, 11]
    assert banned_tokens([1, 2, 3, 4], 2, params, (0, 2)) == []


def test_apply_bans_masks_only_the_listed_tokens_of_each_row():
    logits = torch.zeros(3, 5)
    out = apply_bans(logits, [[1, 3], [], [4]])
    assert torch.isinf(out).nonzero().tolist() == [[0, 1], [0, 3], [2, 4]]
    assert torch.equal(apply_bans(logits, [[], [], []]), logits)


def test_banned_tokens_are_never_sampled():
    logits = torch.tensor([0.0, 8.0, 0.0, 7.0, 0.0, 0.0])
    bad = ((1,), (2, 3))
    greedy = draw(logits, [make_seq(prompt=(5, 2), bad_token_ids=bad)])
    assert greedy.token_ids.item() == 0          # 1 banned, 3 banned after a 2; ties -> first
    tokens = draws_over_seeds(logits, num_seeds=300, temperature=3.0, bad_token_ids=bad,
                              prompt=(5, 2))
    assert not {1, 3} & set(tokens)
    assert 3 in draws_over_seeds(logits, num_seeds=50, temperature=3.0, bad_token_ids=bad)


def test_end_id_is_impossible_until_min_new_tokens():
    logits = torch.tensor([0.0, 0.0, 9.0, 1.0])
    early = make_seq(output=(3,), min_new_tokens=2)
    assert draw(logits, [early], end_ids=(2,)).token_ids.item() == 3
    tokens = draws_over_seeds(logits, num_seeds=200, temperature=5.0, min_new_tokens=2)
    assert 2 in tokens                                    # reachable without the end-id ban
    seqs = [make_seq(seed=s, temperature=5.0, min_new_tokens=2) for s in range(200)]
    assert 2 not in draw(logits, seqs, end_ids=(2,)).token_ids.tolist()
    done = make_seq(output=(3, 3), min_new_tokens=2)
    assert draw(logits, [done], end_ids=(2,)).token_ids.item() == 2


# ---- logprobs ----------------------------------------------------------------------------------

def test_logprobs_are_log_softmax_of_the_processed_logits_at_the_chosen_token():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 30, generator=generator)
    seqs = [make_seq(output=(3, 4), repetition_penalty=1.5),                   # greedy
            make_seq(seed=1, temperature=0.7, top_k=5, output=(8,), bad_token_ids=((2,),)),
            make_seq(seed=2, temperature=1.5, top_p=0.5, presence_penalty=0.5, output=(1, 1)),
            make_seq(seed=3, temperature=1.0, min_p=0.2, frequency_penalty=0.3, output=(6,))]
    out = draw(logits, seqs)
    expected = logits.clone()
    row0 = expected[0]
    for token in {1, 2, 3, 4}:
        row0[token] = row0[token] / 1.5 if row0[token] > 0 else row0[token] * 1.5
    expected[1, 2] = -math.inf
    expected[1] /= 0.7
    expected[2, 1] -= 0.5
    expected[2] /= 1.5
    expected[3, 6] -= 0.3
    for row in range(4):
        token = out.token_ids[row].item()
        want = expected[row].log_softmax(-1)[token].item()
        assert out.logprobs[row].item() == pytest.approx(want, abs=1e-5)
    assert out.token_ids[0].item() == expected[0].argmax().item()


# ---- building the batch ------------------------------------------------------------------------

def test_build_sampling_batch_collects_per_row_settings():
    seqs = [make_seq(output=(4, 5)),
            make_seq(seed=9, temperature=0.8, top_k=1, output=(6,)),
            make_seq(seed=10, temperature=0.9, top_p=0.7, repetition_penalty=1.2,
                     min_new_tokens=3)]
    batch = batch_of(seqs, end_ids=(0,))
    assert batch.greedy_rows == [True, True, False]
    assert batch.temperature.tolist() == pytest.approx([0.0, 0.0, 0.9])
    assert batch.any_penalty and batch.any_filter
    assert batch.seeds[1:] == [9, 10]
    assert batch.output_index == [2, 1, 0]
    assert batch.output_tokens.tolist() == [[4, 5], [6, -1], [-1, -1]]
    assert batch.seen_tokens.tolist() == [[-1, -1, -1], [-1, -1, -1], [1, 2, 3]]
    assert batch.banned == [[], [], [0]]
    plain = batch_of([make_seq(), make_seq(seed=1, temperature=1.0)])
    assert not plain.any_penalty and not plain.any_filter


def test_plain_greedy_shortcut_only_when_min_new_tokens_has_nothing_to_ban():
    from runtime_service.model.sampler import is_plain_greedy

    no_end = lambda seq: ()  # noqa: E731
    with_end = lambda seq: (7,)  # noqa: E731
    fixed_length = make_seq(max_new_tokens=8, min_new_tokens=8)
    assert is_plain_greedy([fixed_length], no_end)          # nothing to ban: argmax is exact
    assert not is_plain_greedy([fixed_length], with_end)    # end id 7 is banned until 8 tokens
    assert is_plain_greedy([make_seq(output=range(8), max_new_tokens=9, min_new_tokens=8)],
                           with_end)
    one_token_stop = make_seq(max_new_tokens=8, min_new_tokens=8, stop_token_ids=((5,),))
    assert not is_plain_greedy([one_token_stop], no_end)
    assert not is_plain_greedy([make_seq(temperature=0.7)], no_end)
