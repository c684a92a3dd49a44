"""In-flight batching: which sequences run this step, and how many tokens each computes.

Pure Python (no torch), unit-tested alone. Each step has a budget of `max_num_tokens` tokens and
`max_batch_size` sequences. Running sequences go first, oldest first, each asking for the gap
between its tokens and its computed tokens (one token when decoding); then waiting sequences are
admitted by priority and arrival, a long prompt in chunks when chunked prefill is on.

Policies:
- GUARANTEED_NO_EVICT admits a sequence only if the pool can hold every running sequence at its
  maximum length plus this one at its maximum: nothing is ever preempted.
- MAX_UTILIZATION admits whatever fits now; when a running sequence cannot grow, the newest
  running sequence is preempted (its blocks freed, its tokens kept) and later recomputed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from runtime_service.errors import InvalidRequest
from runtime_service.engine.kv_cache import KVCacheManager
from runtime_service.engine.sequence import Sequence, SequenceStatus


class SchedulerPolicy(str, enum.Enum):
    GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
    MAX_UTILIZATION = "MAX_UTILIZATION"


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = 64
    max_num_tokens: int = 4096
    policy: SchedulerPolicy = SchedulerPolicy.GUARANTEED_NO_EVICT
    enable_chunked_prefill: bool = True

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise InvalidRequest(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_num_tokens < 1:
            raise InvalidRequest(f"max_num_tokens must be >= 1, got {self.max_num_tokens}")
        object.__setattr__(self, "policy", SchedulerPolicy(self.policy))


@dataclass(frozen=True)
class ScheduledSequence:
    seq: Sequence
    num_new_tokens: int

    @property
    def completes(self) -> bool:
        """True when this step computes the sequence's last uncomputed token, so it samples."""
        seq = self.seq
        return seq.num_computed_tokens + self.num_new_tokens == seq.num_tokens + seq.num_pending_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)   # (source, dest) ids
    block_rotations: list[tuple[tuple[int, ...], int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    def __bool__(self) -> bool:
        return bool(self.scheduled)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager):
        self.config = config
        self.kv = kv
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)
        self.waiting.sort(key=lambda s: (-s.request.priority, s.request.arrival_time))

    def add_running(self, seq: Sequence) -> None:
        """A beam forked from a running parent joins the batch directly; its parent's
        admission reserved its blocks."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def requeue(self, seq: Sequence) -> None:
        """Frees a sequence's blocks and puts it first in line to be recomputed."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.num_cached_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.insert(0, seq)

    def finish(self, seq: Sequence) -> None:
        """Removes a sequence for good (finished or aborted) and frees its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_tokens
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:    # preempted earlier in this loop
                continue
            num_new = min(seq.num_uncomputed_tokens, budget)
            if num_new == 0 or (seq.num_pending_tokens and seq.reached_max_length):
                continue       # a sequence whose pending token ends it computes nothing more
            if not self._grow_or_preempt(seq, num_new, out):
                continue
            out.scheduled.append(ScheduledSequence(seq, num_new))
            budget -= num_new
        # After a preemption nothing is admitted this step: the freed blocks are for the running
        # sequences, and a victim re-admitted at once would be preempted and scheduled together.
        # The running sequences' future blocks are summed once, then kept up to date as each
        # admission adds its own (summing them per admission was quadratic in the batch).
        reserved = None
        while (not out.preempted and self.waiting and budget > 0
               and len(self.running) < self.config.max_batch_size):
            seq = self.waiting[0]
            self.kv.claim_cached_prefix(seq)
            num_new = seq.num_uncomputed_tokens
            if num_new > budget:
                # A preempted sequence may have outgrown the budget; without chunks it would
                # wait forever, so it is recomputed in chunks even when chunked prefill is off.
                if not self.config.enable_chunked_prefill and seq.num_outputs_sampled == 0:
                    self._unclaim(seq)
                    break
                num_new = budget
            if reserved is None:
                reserved = self._reserved_blocks()
            if not self._can_admit(seq, reserved) or not self.kv.allocate(seq, num_new):
                self._unclaim(seq)
                break
            reserved += self._future_blocks(seq)
            self.waiting.pop(0)
            if seq.request.first_scheduled_time is None:
                seq.request.first_scheduled_time = time.monotonic()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSequence(seq, num_new))
            budget -= num_new
        out.block_copies = self.kv.take_pending_copies()
        out.block_rotations = self.kv.take_pending_rotations()
        return out

    def _unclaim(self, seq: Sequence) -> None:
        """A waiting sequence that is not admitted gives back the cached blocks it claimed."""
        if seq.block_ids:
            self.kv.free(seq)
            seq.num_computed_tokens = 0
            seq.num_cached_tokens = 0

    def _reserved_blocks(self) -> int:
        """Blocks the running sequences may still claim (none are held back for them under
        MAX_UTILIZATION)."""
        if self.config.policy is SchedulerPolicy.MAX_UTILIZATION:
            return 0
        return sum(self._future_blocks(s) for s in self.running)

    def _can_admit(self, seq: Sequence, reserved: int) -> bool:
        if self.config.policy is SchedulerPolicy.MAX_UTILIZATION:
            return True
        return self.kv.num_free_blocks - reserved >= self._future_blocks(seq)

    def _future_blocks(self, seq: Sequence) -> int:
        """Blocks `seq` may still need to reach its maximum length (for each of its beams,
        until they are forked)."""
        most = self.kv.max_blocks_per_sequence(seq.max_total_tokens)
        return max(0, seq.reserved_beams * most - len(seq.block_ids))

    def _grow_or_preempt(self, seq: Sequence, num_new: int, out: SchedulerOutput) -> bool:
        """Allocates for `seq`, preempting the newest running sequences if needed.

        Returns False if `seq` itself had to be preempted.
        """
        while not self.kv.allocate(seq, num_new):
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.num_cached_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.insert(0, seq)
        out.preempted.append(seq)
        out.scheduled = [s for s in out.scheduled if s.seq is not seq]
