"""What a request's stream is sent: RequestOutput records built from a sequence's state.

The executor decides when a request has something new (a token, a step of its beams, its end);
this module says what that looks like: a token delta at the sequence's offset, a whole-beam
snapshot at offset 0 (a client replaces what it showed for that beam), and the best beams when
the search ends. Pure Python: the executor packs the logits tensors a finished sequence asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from runtime_service.engine.request import FinishReason, RequestOutput
from runtime_service.engine.sequence import Sequence

if TYPE_CHECKING:
    from runtime_service.engine.beam_group import BeamGroup


def token_delta(seq: Sequence, emitted_tokens: int, new_text: str,
                reason: FinishReason | None, logits: dict | None = None) -> RequestOutput:
    """The tokens (with their log-probabilities) after the first `emitted_tokens` outputs; the
    first delta carries the prompt's log-probabilities, the last the `logits` asked for
    (context_logits / generation_logits, as the executor packs them)."""
    new_ids = seq.token_ids[seq.num_prompt_tokens + emitted_tokens:]
    new_logprobs = seq.logprobs[emitted_tokens:] if seq.sampling.logprobs else []
    new_top = seq.top_logprobs[emitted_tokens:] if seq.sampling.top_logprobs else []
    return RequestOutput(
        request_id=seq.request_id,
        offset=emitted_tokens,
        new_token_ids=tuple(new_ids),
        new_logprobs=tuple(new_logprobs),
        new_top_logprobs=tuple(new_top),
        prompt_logprobs=tuple(seq.prompt_logprobs) if emitted_tokens == 0 else (),
        new_text=new_text,
        finished=reason is not None,
        finish_reason=reason,
        num_prompt_tokens=seq.num_prompt_tokens,
        num_output_tokens=seq.num_output_tokens,
        num_cached_tokens=seq.num_cached_tokens,
        **(logits or {}),
    )


def beam_snapshot(leader: Sequence, index: int, tokens, decode: Callable[[list[int]], str],
                  **fields) -> RequestOutput:
    """Beam `index`'s whole output so far: offset 0, so a client replaces what it showed."""
    return RequestOutput(request_id=leader.request_id, offset=0,
                         new_token_ids=tuple(tokens), new_text=decode(list(tokens)),
                         sequence_index=index, num_prompt_tokens=leader.num_prompt_tokens,
                         num_output_tokens=len(tokens),
                         num_cached_tokens=leader.num_cached_tokens, **fields)


def final_beams(group: "BeamGroup", leader: Sequence,
                decode: Callable[[list[int]], str]) -> list[RequestOutput]:
    """The best `num_return_sequences` hypotheses of a finished search, the last one finished."""
    hypotheses = group.search.best(leader.sampling.num_return_sequences)
    outputs = []
    for index, hyp in enumerate(hypotheses):
        ended = bool(hyp.token_ids) and hyp.token_ids[-1] in group.end_ids
        outputs.append(beam_snapshot(
            leader, index, hyp.token_ids, decode, finished=index == len(hypotheses) - 1,
            finish_reason=FinishReason.END_ID if ended else FinishReason.LENGTH,
            cumulative_logprob=hyp.score))
    return outputs


def stamp_first_output(seq: Sequence) -> None:
    if seq.request.first_output_time is None:
        seq.request.first_output_time = time.monotonic()

