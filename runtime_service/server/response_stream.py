"""Turns a request's RequestOutputs into GenerateResponses: Chunks while streaming, then Completes.

Each sequence's tokens are kept by output position (out[offset:] = new tokens), so an engine that
rewrites a tail (beam search) and one that only appends are handled alike, and a Complete always
carries the whole output of its sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.v1 import runtime_pb2

from runtime_service.server.convert import FINISH_REASONS
from runtime_service.engine.request import RequestOutput


@dataclass
class _SequenceState:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list = field(default_factory=list)
    text: str = ""
    complete: bool = False


def _top(alternatives) -> runtime_pb2.TopLogprobs:
    return runtime_pb2.TopLogprobs(token_ids=[t for t, _ in alternatives],
                                   logprobs=[v for _, v in alternatives])


def _continues(last: runtime_pb2.Chunk, chunk: runtime_pb2.Chunk) -> bool:
    """`chunk` appends to `last` (an offset-0 chunk is a snapshot that replaces, never folded);
    both carry logprobs or neither does, so the folded lists stay aligned with the tokens."""
    return (chunk.sequence_index == last.sequence_index and chunk.offset > 0
            and chunk.offset == last.offset + len(last.token_ids)
            and bool(chunk.logprobs) == bool(last.logprobs)
            and bool(chunk.top_logprobs) == bool(last.top_logprobs))


def _fold(last: runtime_pb2.Chunk, chunk: runtime_pb2.Chunk) -> None:
    last.token_ids.extend(chunk.token_ids)
    last.text += chunk.text
    last.logprobs.extend(chunk.logprobs)
    last.top_logprobs.extend(chunk.top_logprobs)


class ResponseAssembler:
    def __init__(self, request_id: str, streaming: bool, detokenize: bool):
        self.request_id = request_id
        self.streaming = streaming
        self.detokenize = detokenize
        self._sequences: dict[int, _SequenceState] = {}
        self.finish_reason = None
        self.num_prompt_tokens = 0
        self.num_output_tokens = 0
        self._cached_tokens = 0
        self._prompt_logprobs: tuple[float, ...] = ()
        self._logits: dict[str, runtime_pb2.Logits] = {}

    def add(self, out: RequestOutput) -> list[runtime_pb2.GenerateResponse]:
        """The responses this output produces (zero, one chunk, and/or one complete)."""
        return self.add_all([out])

    def add_all(self, outs: list[RequestOutput]) -> list[runtime_pb2.GenerateResponse]:
        """The responses a run of outputs produces, in order, where a chunk that continues the
        one before it (same sequence, the next offset) is folded into it: a client that fell
        behind gets one message for the tokens it missed instead of one per token."""
        responses: list[runtime_pb2.GenerateResponse] = []
        for out in outs:
            chunk, complete = self._apply(out)
            if chunk is not None:
                last = responses[-1].chunk if responses and responses[-1].HasField("chunk") \
                    else None
                if last is not None and _continues(last, chunk):
                    _fold(last, chunk)
                else:
                    responses.append(runtime_pb2.GenerateResponse(request_id=self.request_id,
                                                                  chunk=chunk))
            if complete is not None:
                responses.append(complete)
        return responses

    def _apply(self, out: RequestOutput):
        """Records `out`; returns (its Chunk when streaming, else None; the Complete it ends
        its sequence with, else None)."""
        state = self._sequences.setdefault(out.sequence_index, _SequenceState())
        del state.token_ids[out.offset:]
        state.token_ids.extend(out.new_token_ids)
        if out.new_logprobs:
            del state.logprobs[out.offset:]
            state.logprobs.extend(out.new_logprobs)
        top = [_top(alternatives) for alternatives in out.new_top_logprobs]
        if top:
            del state.top_logprobs[out.offset:]
            state.top_logprobs.extend(top)
        if out.prompt_logprobs:
            self._prompt_logprobs = out.prompt_logprobs
        for name in ("context_logits", "generation_logits"):
            matrix = getattr(out, name)
            if matrix is not None:
                self._logits[name] = runtime_pb2.Logits(rows=matrix.rows, cols=matrix.cols,
                                                        data=matrix.data)
        text = out.new_text if self.detokenize else ""
        # offset 0 is a whole snapshot (first output, or a beam rewritten from its start)
        state.text = text if out.offset == 0 else state.text + text
        self.num_prompt_tokens = out.num_prompt_tokens
        self.num_output_tokens = max(self.num_output_tokens, out.num_output_tokens)
        chunk = complete = None
        if self.streaming and (out.new_token_ids or text):
            chunk = runtime_pb2.Chunk(sequence_index=out.sequence_index, offset=out.offset,
                                      token_ids=out.new_token_ids, text=text,
                                      logprobs=out.new_logprobs, top_logprobs=top)
        # a sequence is over when it carries a reason (beams end one by one) or the request ends
        if (out.finished or out.finish_reason is not None) and not state.complete:
            self.finish_reason = out.finish_reason
            self._cached_tokens = out.num_cached_tokens
            complete = self._complete(out.sequence_index, state, out.finish_reason)
        return chunk, complete

    def finish(self) -> list[runtime_pb2.GenerateResponse]:
        """Completes for sequences the engine ended without a reason of their own."""
        return [self._complete(index, state, self.finish_reason)
                for index, state in sorted(self._sequences.items()) if not state.complete]

    def _complete(self, index: int, state: _SequenceState, reason) -> runtime_pb2.GenerateResponse:
        state.complete = True
        return runtime_pb2.GenerateResponse(
            request_id=self.request_id,
            complete=runtime_pb2.Complete(
                sequence_index=index, token_ids=state.token_ids, text=state.text,
                finish_reason=FINISH_REASONS.get(reason, runtime_pb2.FINISH_REASON_UNSPECIFIED),
                logprobs=state.logprobs, top_logprobs=state.top_logprobs,
                prompt_logprobs=self._prompt_logprobs, **self._logits,
                usage=runtime_pb2.Usage(prompt_tokens=self.num_prompt_tokens,
                                        completion_tokens=len(state.token_ids),
                                        cached_tokens=self._cached_tokens)))

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens the engine took from its prefix cache (known once a sequence ends)."""
        return self._cached_tokens

    @property
    def done(self) -> bool:
        return bool(self._sequences) and all(s.complete for s in self._sequences.values())
