"""Resuming a Generate stream on another replica after its pod died or drained mid-stream.

The client keeps what it has received of the output. When the stream fails with a status that
says the replica is gone (UNAVAILABLE, or CANCELLED that this client did not ask for), it sends
the prompt plus the tokens received to another replica, with `resume_offset` = their count, and
shifts the new stream's offsets by it. The caller sees one stream: every token once, in order.
A greedy request continues exactly; a seeded one too, because the runtime draws output position
i with a generator seeded from (seed, i) and `resume_offset` tells it where i starts.

Only what can be continued exactly is resumed: one output sequence (no beams), an explicit
max_new_tokens, and no presence or frequency penalty (they count the output tokens, which a
resumed request sees as prompt). Anything else fails with the original error, as before.
"""

from __future__ import annotations

import grpc

from kiln.v1 import runtime_pb2

RESUMABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class StreamProgress:
    """What the client received of one request's output, across the replicas it ran on."""

    def __init__(self, request: runtime_pb2.GenerateRequest):
        self.request = request
        self.base = 0                    # output tokens received before the current attempt
        self.tokens: list[int] = []      # out[offset:] = token_ids, over every attempt
        self.logprobs: list[float] = []
        self.top_logprobs: list = []
        self.pieces: dict[int, str] = {}  # offset -> text of the chunk that started there
        self._text_before = ""
        self.num_resumes = 0

    def can_resume(self, code: grpc.StatusCode, cancelled_by_client: bool) -> bool:
        s = self.request.sampling
        if code not in RESUMABLE_CODES or cancelled_by_client:
            return False
        if (s.beam_width > 1 or s.num_return_sequences > 1 or s.presence_penalty
                or s.frequency_penalty):
            return False
        return s.HasField("max_new_tokens") or not self.tokens

    # ---- responses, as an uninterrupted run would have sent them -------------------------

    def translate(self, response: runtime_pb2.GenerateResponse) -> runtime_pb2.GenerateResponse:
        kind = response.WhichOneof("kind")
        if kind == "chunk":
            chunk = response.chunk
            if chunk.sequence_index == 0:
                chunk.offset += self.base
                self._record(chunk)
        elif kind == "complete" and self.base:
            self._extend_complete(response.complete)
        return response

    def _record(self, chunk: runtime_pb2.Chunk) -> None:
        offset = chunk.offset
        self.tokens[offset:] = list(chunk.token_ids)
        if chunk.logprobs:
            self.logprobs[offset:] = list(chunk.logprobs)
        if chunk.top_logprobs:
            self.top_logprobs[offset:] = list(chunk.top_logprobs)
        self.pieces = {at: text for at, text in self.pieces.items() if at < offset}
        self.pieces[offset] = chunk.text

    def _extend_complete(self, complete: runtime_pb2.Complete) -> None:
        before = self.tokens[:self.base]
        tail = list(complete.token_ids)
        del complete.token_ids[:]
        complete.token_ids.extend(before + tail)
        complete.text = self._text_before + complete.text
        if complete.logprobs:
            logprobs = self.logprobs[:self.base] + list(complete.logprobs)
            del complete.logprobs[:]
            complete.logprobs.extend(logprobs)
        if complete.top_logprobs:
            top = self.top_logprobs[:self.base] + list(complete.top_logprobs)
            del complete.top_logprobs[:]
            complete.top_logprobs.extend(top)
        if complete.prompt_logprobs:
            kept = list(complete.prompt_logprobs)[:max(0, len(complete.prompt_logprobs)
                                                         - self.base)]
            del complete.prompt_logprobs[:]
            complete.prompt_logprobs.extend(kept)
        usage = complete.usage
        usage.prompt_tokens = max(0, usage.prompt_tokens - self.base)
        usage.completion_tokens += self.base

    # ---- the request that continues the output -------------------------------------------

    def remaining_tokens(self) -> int | None:
        s = self.request.sampling
        return s.max_new_tokens - len(self.tokens) if s.HasField("max_new_tokens") else None

    def finished_complete(self) -> runtime_pb2.GenerateResponse:
        """The Complete of an output that had reached max_new_tokens when its replica died."""
        self.base = 0
        text = "".join(text for _, text in sorted(self.pieces.items()))
        return runtime_pb2.GenerateResponse(
            request_id=self.request.request_id,
            complete=runtime_pb2.Complete(
                token_ids=self.tokens, text=text, logprobs=self.logprobs,
                top_logprobs=self.top_logprobs,
                finish_reason=runtime_pb2.FINISH_REASON_LENGTH,
                usage=runtime_pb2.Usage(completion_tokens=len(self.tokens))))

    def resumed_request(self, prompt_ids: list[int]) -> runtime_pb2.GenerateRequest:
        """The original request, continued after the tokens received so far."""
        self.num_resumes += 1
        self.base = len(self.tokens)
        self._text_before = "".join(text for _, text in sorted(self.pieces.items()))
        request = runtime_pb2.GenerateRequest()
        request.CopyFrom(self.request)
        was_text = self.request.WhichOneof("input") == "text"
        request.token_ids.CopyFrom(runtime_pb2.TokenIds(ids=list(prompt_ids) + self.tokens))
        if was_text and not request.output.HasField("detokenize"):
            request.output.detokenize = True
        request.resume_offset = self.base
        request.request_id = f"{self.request.request_id[:118]}.r{self.num_resumes}"
        sampling = request.sampling
        if sampling.HasField("max_new_tokens"):
            sampling.max_new_tokens -= self.base
        sampling.min_new_tokens = max(0, sampling.min_new_tokens - self.base)
        return request
