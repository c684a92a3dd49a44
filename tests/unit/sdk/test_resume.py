"""StreamProgress: what a resumed request asks for and how its responses are shifted, so the
caller sees one uninterrupted stream."""

from __future__ import annotations

import grpc

from kiln.resume import StreamProgress
from kiln.v1 import runtime_pb2


def original(**sampling) -> runtime_pb2.GenerateRequest:
    return runtime_pb2.GenerateRequest(
        request_id="r", text="hello", streaming=True,
        sampling=runtime_pb2.SamplingConfig(max_new_tokens=10, min_new_tokens=4, seed=7,
                                            temperature=0.8, **sampling))


def chunk(offset, ids, text):
    return runtime_pb2.GenerateResponse(chunk=runtime_pb2.Chunk(offset=offset, token_ids=ids,
                                                                text=text))


def test_the_resumed_request_sends_prompt_plus_output_and_shrinks_its_budget():
    progress = StreamProgress(original())
    progress.translate(chunk(0, [5, 6], "ab"))
    progress.translate(chunk(2, [7], "c"))
    resumed = progress.resumed_request([100, 101])
    assert list(resumed.token_ids.ids) == [100, 101, 5, 6, 7]
    assert resumed.resume_offset == 3 and resumed.output.detokenize
    assert resumed.sampling.max_new_tokens == 7 and resumed.sampling.min_new_tokens == 1
    assert resumed.sampling.seed == 7 and resumed.request_id == "r.r1"


def test_responses_after_a_resume_continue_the_offsets_and_the_complete_is_whole():
    progress = StreamProgress(original())
    progress.translate(chunk(0, [5, 6], "ab"))
    progress.resumed_request([100])
    shifted = progress.translate(chunk(0, [8], "d"))
    assert shifted.chunk.offset == 2
    complete = progress.translate(runtime_pb2.GenerateResponse(complete=runtime_pb2.Complete(
        token_ids=[8, 9], text="de", usage=runtime_pb2.Usage(prompt_tokens=3,
                                                             completion_tokens=2))))
    assert list(complete.complete.token_ids) == [5, 6, 8, 9]
    assert complete.complete.text == "abde"
    assert complete.complete.usage.prompt_tokens == 1
    assert complete.complete.usage.completion_tokens == 4


def test_only_what_continues_exactly_is_resumed():
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert StreamProgress(original()).can_resume(unavailable, cancelled_by_client=False)
    assert not StreamProgress(original()).can_resume(unavailable, cancelled_by_client=True)
    assert not StreamProgress(original()).can_resume(grpc.StatusCode.INVALID_ARGUMENT, False)
    assert not StreamProgress(original(beam_width=2)).can_resume(unavailable, False)
    assert not StreamProgress(original(presence_penalty=0.5)).can_resume(unavailable, False)
