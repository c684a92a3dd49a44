"""The beams of one request inside the engine: k sequences that share KV blocks.

The prompt is computed once, by the leader. After each step the search (beam_search.py) says
which parent every beam continues; the beams then take their parents' tokens and block tables
(shared, copied on first write by the KV manager), so no cache is ever copied wholesale. A beam
group is scheduled like k ordinary sequences; the group's admission reserved room for all k.
"""

from __future__ import annotations

import torch

from runtime_service.engine.beam_search import BeamSearch
from runtime_service.engine.kv_cache import KVCacheManager
from runtime_service.engine.scheduler import Scheduler
from runtime_service.engine.sequence import Sequence


class BeamGroup:
    def __init__(self, leader: Sequence, end_ids: tuple[int, ...]):
        p = leader.sampling
        self.leader = leader
        self.end_ids = end_ids
        self.search = BeamSearch(p.beam_width, leader.num_prompt_tokens, leader.max_total_tokens,
                                 end_ids, p.length_penalty, p.early_stopping,
                                 p.beam_search_diversity_rate)
        self.seqs: list[Sequence] = [leader]
        self.pending_rows: dict[str, torch.Tensor] = {}

    @property
    def running(self) -> list[Sequence]:
        return self.seqs[:self.search.num_running]

    def add_rows(self, rows: dict[str, torch.Tensor]) -> bool:
        """Collects this step's log-probabilities; True once every running beam has one."""
        for seq in self.running:
            if seq.request_key in rows:
                self.pending_rows[seq.request_key] = rows[seq.request_key]
        return all(seq.request_key in self.pending_rows for seq in self.running)

    def advance(self, scheduler: Scheduler, kv: KVCacheManager, max_seq_len: int) -> None:
        """Runs one search step and re-points every beam at its parent's tokens and blocks."""
        rows = torch.stack([self.pending_rows.pop(s.request_key) for s in self.running])
        generated = self.leader.num_output_tokens
        if generated < self.leader.sampling.min_new_tokens and self.end_ids:
            rows[:, list(self.end_ids)] = float("-inf")
        parents_before = [(list(s.token_ids), s.num_computed_tokens, list(s.logprobs))
                          for s in self.running]
        choices = self.search.step(rows)
        while len(self.seqs) < len(choices):
            child = Sequence(self.leader.request, max_seq_len, beam_index=len(self.seqs))
            child.seed = self.leader.seed
            scheduler.add_running(child)
            self.seqs.append(child)
        self.leader.reserved_beams = 1
        kv.reassign(self.seqs, [c.parent for c in choices])
        for seq, choice in zip(self.seqs, choices):
            tokens, computed, logprobs = parents_before[choice.parent]
            seq.token_ids = tokens + [choice.token_id]
            seq.num_computed_tokens = computed
            seq.logprobs = logprobs + [float(rows[choice.parent, choice.token_id])]

    def restart(self, scheduler: Scheduler) -> None:
        """After a preemption: drop the forked beams, recompute from the prompt alone."""
        for child in self.seqs[1:]:
            scheduler.finish(child)
        self.seqs = [self.leader]
        self.pending_rows.clear()
        self.search.reset()
        self.leader.token_ids = self.leader.token_ids[:self.leader.num_prompt_tokens]
        self.leader.logprobs = []
        self.leader.reserved_beams = self.leader.sampling.beam_width
        scheduler.requeue(self.leader)
