"""Beam search for one request, step by step, with transformers' exact selection rules.

Each step takes the log-probabilities of the running beams' next token and returns which parent
each new beam continues and with which token; the executor then re-points the beams' KV blocks
(shared, copied on write) instead of copying caches. The bookkeeping follows transformers'
vectorized beam search (top 2k candidates, finished hypotheses kept with the length penalty
score / generated_length ** length_penalty, early_stopping True / False / "never"), so sequences
and scores equal `generate(num_beams=k, ...)` for the same logits. A diversity rate (off by
default) lowers each beam's k-th best child by k * rate before the candidates are compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_NEG = -1.0e9


@dataclass(frozen=True)
class BeamChoice:
    parent: int          # index of the running beam this new beam continues
    token_id: int


@dataclass(frozen=True)
class BeamHypothesis:
    token_ids: tuple[int, ...]
    score: float          # cumulative log-probability over generated_length ** length_penalty


class BeamSearch:
    def __init__(self, beam_width: int, prompt_len: int, max_length: int,
                 end_ids: tuple[int, ...], length_penalty: float = 1.0,
                 early_stopping: bool | str = True, diversity_rate: float = 0.0):
        self.k = beam_width
        self.prompt_len = prompt_len
        self.max_length = max_length
        self.end_ids = tuple(end_ids)
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.diversity_rate = diversity_rate
        self.reset()

    def reset(self) -> None:
        """Back to the prompt alone (after a preemption the search is recomputed)."""
        self.cur_len = self.prompt_len
        self.running: list[list[int]] = [[]]
        self.running_scores = torch.zeros(1)
        self.finished_tokens: list[tuple[int, ...]] = [()] * self.k
        self.finished_scores = torch.full((self.k,), _NEG)
        self.is_finished = torch.zeros(self.k, dtype=torch.bool)
        self.improvement_possible = True
        self.done = False

    @property
    def num_running(self) -> int:
        return len(self.running)

    def step(self, log_probs: torch.Tensor) -> list[BeamChoice]:
        """log_probs [num_running, V] (float32, CPU) -> the k new running beams."""
        k, vocab = self.k, log_probs.shape[-1]
        keep = max(2, 1 + len(self.end_ids)) * k
        if self.diversity_rate:
            top_scores, top_index = self._diverse_candidates(log_probs, keep)
        else:
            scores = (log_probs + self.running_scores[:, None]).reshape(-1)
            top_scores, top_index = scores.topk(min(keep, scores.numel()))
        parents = (top_index // vocab).tolist()
        tokens = (top_index % vocab).tolist()
        at_limit = self.cur_len + 1 >= self.max_length
        hits = torch.tensor([at_limit or t in self.end_ids for t in tokens])
        candidates = [self.running[p] + [t] for p, t in zip(parents, tokens)]

        running_scores = top_scores + hits.float() * _NEG
        next_index = running_scores.topk(k).indices.tolist()
        choices = [BeamChoice(parents[i], tokens[i]) for i in next_index]
        self.running = [candidates[i] for i in next_index]
        self.running_scores = running_scores[next_index]

        self._update_finished(top_scores, candidates, hits)
        self.cur_len += 1
        self._update_improvement_possible()
        all_hit = bool(hits.all())
        full_and_early = bool(self.is_finished.all()) and self.early_stopping is True
        self.done = not self.improvement_possible or full_and_early or all_hit
        return choices

    def _diverse_candidates(self, log_probs: torch.Tensor, keep: int):
        """The best `keep` (score, flat index) pairs when the k-th best child of each beam
        (k = 0, 1, ...) loses k * diversity_rate (Li et al. 2016, "A Simple, Fast Diverse
        Decoding Algorithm", as TensorRT-LLM's beam_search_diversity_rate applies it), so that
        siblings compete less with other beams. A beam's top `keep` children suffice: the
        penalty only grows with rank."""
        vocab = log_probs.shape[-1]
        per_beam = min(keep, vocab)
        child_scores, child_tokens = log_probs.topk(per_beam, dim=-1)
        ranks = torch.arange(per_beam, dtype=child_scores.dtype)
        scores = child_scores + self.running_scores[:, None] - self.diversity_rate * ranks
        flat = child_tokens + torch.arange(log_probs.shape[0])[:, None] * vocab
        top_scores, order = scores.reshape(-1).topk(min(keep, scores.numel()))
        return top_scores, flat.reshape(-1)[order]

    def _update_finished(self, top_scores: torch.Tensor, candidates: list[list[int]],
                         hits: torch.Tensor) -> None:
        in_top_k = torch.arange(len(candidates)) < self.k
        just_finished = hits & in_top_k
        generated = self.cur_len + 1 - self.prompt_len
        scores = top_scores / (generated ** self.length_penalty)
        if bool(self.is_finished.all()) and self.early_stopping is True:
            scores = scores + _NEG
        if not self.improvement_possible:
            scores = scores + _NEG
        scores = scores + (~just_finished).float() * _NEG
        merged_scores = torch.cat((self.finished_scores, scores))
        merged_tokens = self.finished_tokens + [tuple(c) for c in candidates]
        merged_finished = torch.cat((self.is_finished, just_finished))
        best = merged_scores.topk(self.k).indices.tolist()
        self.finished_scores = merged_scores[best]
        self.finished_tokens = [merged_tokens[i] for i in best]
        self.is_finished = merged_finished[best]

    def _update_improvement_possible(self) -> None:
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_length = self.max_length - self.prompt_len
        else:
            best_length = self.cur_len - self.prompt_len
        best_running = self.running_scores[0] / (best_length ** self.length_penalty)
        worst_finished = torch.where(self.is_finished, self.finished_scores.min(),
                                     torch.tensor(_NEG))
        self.improvement_possible = self.improvement_possible and bool(
            (best_running > worst_finished).any())

    def best(self, n: int) -> list[BeamHypothesis]:
        """The n best finished hypotheses, best first."""
        return [BeamHypothesis(self.finished_tokens[i], float(self.finished_scores[i]))
                for i in range(min(n, self.k))]
