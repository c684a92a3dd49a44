"""ResponseAssembler: RequestOutputs to Chunks and Completes, streaming or not, beams included."""

from __future__ import annotations

from kiln.v1 import runtime_pb2

from runtime_service.request import FinishReason, RequestOutput
from runtime_service.response_stream import ResponseAssembler


def out(offset, ids, text="", finished=False, reason=None, index=0):
    return RequestOutput("r", offset, tuple(ids), new_text=text, finished=finished,
                         finish_reason=reason, num_prompt_tokens=3,
                         num_output_tokens=offset + len(ids), sequence_index=index)


def kinds(responses):
    return [r.WhichOneof("kind") for r in responses]


def test_streaming_emits_chunks_then_one_complete():
    assembler = ResponseAssembler("r", streaming=True, detokenize=True)
    responses = assembler.add(out(0, [5], "a")) + assembler.add(
        out(1, [6], "b", True, FinishReason.END_ID))
    assert kinds(responses) == ["chunk", "chunk", "complete"]
    done = responses[-1].complete
    assert list(done.token_ids) == [5, 6] and done.text == "ab"
    assert done.finish_reason == runtime_pb2.FINISH_REASON_END_ID and assembler.done
    assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == 2


def test_not_streaming_emits_only_the_complete_and_drops_text_for_id_input():
    assembler = ResponseAssembler("r", streaming=False, detokenize=False)
    responses = assembler.add(out(0, [5], "a")) + assembler.add(
        out(1, [6], "b", True, FinishReason.LENGTH))
    assert kinds(responses) == ["complete"] and responses[0].complete.text == ""


def test_beams_complete_one_by_one_and_unfinished_ones_at_the_end():
    assembler = ResponseAssembler("r", streaming=False, detokenize=True)
    assembler.add(out(0, [1, 2], "xy", index=0))
    assembler.add(out(0, [3, 4], "zw", index=1))
    first = assembler.add(out(0, [1, 9], "xq", reason=FinishReason.LENGTH, index=0))
    assert kinds(first) == ["complete"] and first[0].complete.text == "xq"
    rest = assembler.finish()
    assert [r.complete.sequence_index for r in rest] == [1]
    assert list(rest[0].complete.token_ids) == [3, 4]
