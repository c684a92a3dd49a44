"""Every check on a request, in one place, before anything is scheduled (TGI's habit).

Pure Python. A request that fails raises a typed error naming the field and the allowed range;
nothing about it has touched the scheduler, so other requests are unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from runtime_service.errors import CapacityExceeded, FailedPrecondition, InvalidRequest
from runtime_service.engine.request import Request

MAX_STOP_SEQUENCES = 64
MAX_STOP_SEQUENCE_LEN = 256
MAX_REQUEST_ID_LEN = 256
MAX_SEED = 2 ** 63 - 1
MAX_TOP_LOGPROBS = 20
MAX_STREAM_TOKENS = 1 << 24      # a StreamingLLM stream is bounded by time, not by memory


@dataclass(frozen=True)
class EngineLimits:
    vocab_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    max_beam_width: int
    max_kv_tokens: int
    enable_chunked_prefill: bool = True
    window_tokens: int | None = None     # most tokens a sequence holds under a sliding window


def _check_int(name: str, value, low, high) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer, got {value!r}")
    _check_range(name, value, low, high)


def _check_range(name: str, value, low, high, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidRequest(f"{name} must be a number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidRequest(f"{name} must be in {bracket}{low}, {high}], got {value}")


def _check_token_ids(prompt, vocab_size: int) -> None:
    """Every id a plain int in [0, vocab_size). The common case takes three C-level passes
    (60 us for 1024 tokens on the CI CPU, against 104 us for a Python loop, on the path of
    every first token and twice through a pod); only a bad prompt is walked, to name its
    first bad id."""
    if set(map(type, prompt)) == {int} and 0 <= min(prompt) and max(prompt) < vocab_size:
        return
    for token in prompt:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            raise InvalidRequest(f"token id {token!r} is out of range [0, {vocab_size})")


def validate_request(request: Request, limits: EngineLimits) -> None:
    if not request.request_id or len(request.request_id) > MAX_REQUEST_ID_LEN:
        raise InvalidRequest(
            f"request_id must be 1 to {MAX_REQUEST_ID_LEN} characters long")
    prompt = request.prompt_token_ids
    if not prompt:
        raise InvalidRequest("the prompt is empty")
    if len(prompt) > limits.max_input_len:
        raise InvalidRequest(
            f"the prompt has {len(prompt)} tokens; this engine accepts at most "
            f"{limits.max_input_len} (max_input_len)")
    if len(prompt) >= limits.max_seq_len:
        raise InvalidRequest(
            f"the prompt has {len(prompt)} tokens, leaving no room to generate within "
            f"max_seq_len={limits.max_seq_len}")
    if not limits.enable_chunked_prefill and len(prompt) > limits.max_num_tokens:
        raise InvalidRequest(
            f"the prompt has {len(prompt)} tokens, over max_num_tokens={limits.max_num_tokens}, "
            f"and chunked prefill is off")
    _check_token_ids(prompt, limits.vocab_size)
    _validate_sampling(request, limits)
    total = len(prompt) + request.sampling.max_new_tokens
    total = min(total, limits.window_tokens or limits.max_seq_len)
    total *= request.sampling.beam_width
    if total > limits.max_kv_tokens:
        raise CapacityExceeded(
            f"the request may grow to {total} tokens (all beams) but the KV cache holds "
            f"{limits.max_kv_tokens}")


def _validate_sampling(request: Request, limits: EngineLimits) -> None:
    p = request.sampling
    _check_int("max_new_tokens", p.max_new_tokens, 1,
                 MAX_STREAM_TOKENS if limits.window_tokens else limits.max_seq_len)
    _check_int("min_new_tokens", p.min_new_tokens, 0, p.max_new_tokens)
    _check_range("temperature", p.temperature, 0.0, 100.0)
    _check_int("top_k", p.top_k, 0, limits.vocab_size)
    _check_range("top_p", p.top_p, 0.0, 1.0, low_open=True)
    _check_range("min_p", p.min_p, 0.0, 1.0)
    _check_range("repetition_penalty", p.repetition_penalty, 0.0, 100.0, low_open=True)
    _check_range("presence_penalty", p.presence_penalty, -100.0, 100.0)
    _check_range("frequency_penalty", p.frequency_penalty, -100.0, 100.0)
    _check_range("length_penalty", p.length_penalty, -100.0, 100.0)
    _check_range("top_p_min", p.top_p_min, 0.0, 1.0, low_open=True)
    _check_range("top_p_decay", p.top_p_decay, 0.0, 1.0, low_open=True)
    if p.top_p_reset_id is not None and p.top_p_reset_id != -1:
        _check_int("top_p_reset_ids", p.top_p_reset_id, 0, limits.vocab_size - 1)
    _check_range("beam_search_diversity_rate", p.beam_search_diversity_rate, 0.0, 100.0)
    if p.seed is not None:
        _check_int("seed", p.seed, 0, MAX_SEED)
    if p.end_id is not None and p.end_id != -1:
        _check_int("end_id", p.end_id, 0, limits.vocab_size - 1)
    for name, sequences in (("stop_token_ids", p.stop_token_ids), ("bad_token_ids", p.bad_token_ids)):
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"{name} has {len(sequences)} sequences; at most {MAX_STOP_SEQUENCES}")
        for words in sequences:
            if not words or len(words) > MAX_STOP_SEQUENCE_LEN:
                raise InvalidRequest(
                    f"each of {name} must have 1 to {MAX_STOP_SEQUENCE_LEN} tokens")
            for token in words:
                if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < limits.vocab_size:
                    raise InvalidRequest(f"{name} holds token id {token!r}, out of range")
    if len(p.stop_strings) > MAX_STOP_SEQUENCES or any(
            not s or len(s) > MAX_STOP_SEQUENCE_LEN for s in p.stop_strings):
        raise InvalidRequest(
            f"stop_strings: at most {MAX_STOP_SEQUENCES} non-empty strings of at most "
            f"{MAX_STOP_SEQUENCE_LEN} characters")
    _check_int("top_logprobs", p.top_logprobs, 0, MAX_TOP_LOGPROBS)
    _check_int("beam_width", p.beam_width, 1, 1024)
    if p.beam_width > limits.max_beam_width:
        raise FailedPrecondition(
            f"beam_width={p.beam_width} exceeds the engine's max_beam_width="
            f"{limits.max_beam_width}; rebuild the engine with a larger max_beam_width")
    if p.early_stopping not in (True, False, "never"):
        raise InvalidRequest(
            f"early_stopping must be true, false or \"never\", got {p.early_stopping!r}")
    _check_int("num_return_sequences", p.num_return_sequences, 1, p.beam_width)
    if p.beam_width > 1:
        if limits.window_tokens:
            raise FailedPrecondition("beam search does not combine with a sliding attention window")
        _validate_beam_search(p)


def _validate_beam_search(p) -> None:
    """Beam search ranks by model log-probabilities; sampling-side settings do not apply."""
    ignored = [name for name, off in (
        ("temperature", p.temperature == 0.0), ("top_k", p.top_k in (0, 1)),
        ("top_p", p.top_p == 1.0), ("min_p", p.min_p == 0.0),
        ("repetition_penalty", p.repetition_penalty == 1.0),
        ("presence_penalty", p.presence_penalty == 0.0),
        ("frequency_penalty", p.frequency_penalty == 0.0),
        ("stop_token_ids", not p.stop_token_ids), ("stop_strings", not p.stop_strings),
        ("bad_token_ids", not p.bad_token_ids), ("top_logprobs", not p.top_logprobs),
        ("prompt_logprobs", not p.prompt_logprobs), ("top_p_decay", p.top_p_decay == 1.0),
        ("context_logits", not p.context_logits),
        ("generation_logits", not p.generation_logits)) if not off]
    if ignored:
        raise InvalidRequest(
            f"beam search (beam_width={p.beam_width}) does not combine with "
            f"{', '.join(ignored)}; use beam_width 1 for those")
