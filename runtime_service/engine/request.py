"""What goes into the engine and what comes out of it, as plain data (no torch).

`SamplingParams` is the engine's one description of how to pick tokens; the server converts the
proto's SamplingConfig into it in one place. `Request` is validated by `validation.py` before
anything is scheduled. `RequestOutput` is one step's news for one request: the tokens produced
since the last output, where in the output they start, and, at the end, why it finished.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class FinishReason(str, enum.Enum):
    LENGTH = "length"          # max_new_tokens or max_seq_len reached
    END_ID = "end_id"          # the end token was sampled
    STOP = "stop"              # a stop token sequence or stop string matched
    ABORTED = "aborted"        # cancelled by the client or Abort


@dataclass(frozen=True)
class SamplingParams:
    """How to choose tokens. temperature 0 (or top_k 1) is greedy; 0 disables top_k/min_p."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    end_id: int | None = None              # None: the model's eos ids; -1: never stop on a token
    ignore_eos: bool = False
    stop_token_ids: tuple[tuple[int, ...], ...] = ()
    stop_strings: tuple[str, ...] = ()
    bad_token_ids: tuple[tuple[int, ...], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0                  # also return the n most likely tokens per position
    prompt_logprobs: bool = False          # log-probability of each prompt token (not the 1st)
    beam_width: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = True      # True, False or "never", as transformers defines them
    num_return_sequences: int = 1
    seed_offset: int = 0                   # seeded draws start at this output index (a resume)
    top_p_min: float = 1e-6                # top-p decay: the floor top_p decays to
    top_p_reset_id: int | None = None      # top-p decay: the token that restores top_p
    top_p_decay: float = 1.0               # top-p decay: factor applied after each token
    beam_search_diversity_rate: float = 0.0   # the k-th child of a beam scores k * rate lower
    context_logits: bool = False           # return the logits at every prompt position
    generation_logits: bool = False        # return the logits each output token came from

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0
    cache_salt: str = ""                  # prefix blocks are shared only within one salt
    arrival_time: float = field(default_factory=time.monotonic)
    # Stamped once by the scheduler when the request first runs: queue time for metrics/traces.
    first_scheduled_time: float | None = None
    # Stamped once when the engine hands out the request's first token: with the two above it
    # splits a pod's TTFT into queue, prefill and delivery to the gRPC call (request_log.py).
    first_output_time: float | None = None


@dataclass(frozen=True)
class LogitsMatrix:
    """Logits rows [rows, cols] as float32 little-endian bytes: what the wire carries as is."""

    rows: int
    cols: int
    data: bytes


@dataclass(frozen=True)
class RequestOutput:
    request_id: str
    offset: int                           # output position of new_token_ids[0]
    new_token_ids: tuple[int, ...]
    new_logprobs: tuple[float, ...] = ()
    new_top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = ()   # per token: (id, logprob)
    prompt_logprobs: tuple[float, ...] = ()   # in the first output only, when asked for
    new_text: str = ""                    # decoded text of new tokens, when a tokenizer is set
    finished: bool = False                # the request is complete: this is its last output
    finish_reason: FinishReason | None = None   # set when this sequence is complete
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    sequence_index: int = 0               # beam (or returned sequence) this output belongs to
    cumulative_logprob: float | None = None  # beam score (with length penalty) when beams run
    context_logits: LogitsMatrix | None = None      # in the last output, when asked for
    generation_logits: LogitsMatrix | None = None   # in the last output, when asked for
