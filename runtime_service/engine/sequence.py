"""A request's life inside the engine: its tokens, how many of them the KV cache holds, its blocks.

One rule drives everything (vLLM v1): a sequence has `num_tokens` tokens (prompt plus output) and
`num_computed_tokens` of them are in the KV cache. Each step the scheduler grants some of the gap;
when the gap closes the model samples a new token. Prefill, chunked prefill, decode and resuming
after preemption are all this one rule.
"""

from __future__ import annotations

import enum
import random

from runtime_service.engine.request import FinishReason, Request


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request: Request, max_seq_len: int, beam_index: int = 0):
        self.request = request
        self.request_id = request.request_id
        self.beam_index = beam_index
        self.request_key = request.request_id if beam_index == 0 else \
            f"{request.request_id}#beam{beam_index}"
        self.cache_salt = request.cache_salt
        self.block_hashes: list[bytes] = []
        self.sampling = request.sampling
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.num_computed_tokens = 0
        # Sampled on the device by a step whose tokens the host has not read yet (overlapped
        # scheduling): the cache must catch up to them, though token_ids does not hold them.
        self.num_pending_tokens = 0
        self.num_evicted_tokens = 0      # dropped from the cache by a sliding attention window
        self.block_ids: list[int] = []
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.logprobs: list[float] = []
        self.top_logprobs: list[tuple[tuple[int, float], ...]] = []
        self.prompt_logprobs: list[float] = []
        self.context_logits: list = []       # [n, V] float32 CPU tensors, prompt positions
        self.generation_logits: list = []    # [V] float32 CPU tensors, one per output token
        self.max_total_tokens = min(max_seq_len,
                                    self.num_prompt_tokens + self.sampling.max_new_tokens)
        self.num_preemptions = 0
        self.reserved_beams = 1 if beam_index else request.sampling.beam_width
        self.num_cached_tokens = 0
        self.seed = (self.sampling.seed if self.sampling.seed is not None
                     else random.getrandbits(62))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_prompt_scored(self) -> int:
        """Prompt positions whose logits were already kept (logprobs or context logits)."""
        return max(len(self.prompt_logprobs), sum(len(rows) for rows in self.context_logits))

    @property
    def wants_prompt_logits(self) -> bool:
        return self.sampling.prompt_logprobs or self.sampling.context_logits

    @property
    def num_outputs_sampled(self) -> int:
        """Output tokens sampled so far, including those still on the device."""
        return self.num_output_tokens + self.num_pending_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_cached_positions(self) -> int:
        """Computed tokens that are still in the KV cache."""
        return self.num_computed_tokens - self.num_evicted_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens + self.num_pending_tokens - self.num_computed_tokens

    @property
    def reached_max_length(self) -> bool:
        """True when the tokens sampled so far (pending ones too) fill max_total_tokens."""
        return self.num_tokens + self.num_pending_tokens >= self.max_total_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id!r}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_ids)}, "
                f"{self.status.value})")
