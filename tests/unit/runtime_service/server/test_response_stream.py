"""ResponseAssembler: RequestOutputs to Chunks and Completes, streaming or not, beams included."""

from __future__ import annotations

from kiln.v1 import runtime_pb2

from runtime_service.engine.request import FinishReason, RequestOutput
from runtime_service.server.response_stream import ResponseAssembler


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


def test_a_run_of_outputs_folds_into_one_chunk_per_continuing_sequence():
    """What a lagging client gets: one chunk for the tokens it missed, then the complete."""
    assembler = ResponseAssembler("r", streaming=True, detokenize=True)
    responses = assembler.add_all([out(0, [5], "a"), out(1, [6], "b"), out(2, [7], "c"),
                                   out(3, [8], "d", True, FinishReason.LENGTH)])
    assert kinds(responses) == ["chunk", "complete"]
    chunk = responses[0].chunk
    assert (chunk.offset, list(chunk.token_ids), chunk.text) == (0, [5, 6, 7, 8], "abcd")
    assert list(responses[1].complete.token_ids) == [5, 6, 7, 8]


def test_folding_keeps_snapshots_other_sequences_and_gaps_apart():
    assembler = ResponseAssembler("r", streaming=True, detokenize=True)
    responses = assembler.add_all([
        out(0, [1], "x", index=0), out(1, [2], "y", index=0),      # folded
        out(0, [3], "z", index=1),                                  # another beam
        out(1, [4], "w", index=0),                                  # not after beam 0's chunk
        out(0, [1, 9], "xq", index=0),                              # a rewrite from the start
        out(2, [7], "r", index=0)])                                 # continues the rewrite
    chunks = [(r.chunk.sequence_index, r.chunk.offset, list(r.chunk.token_ids))
              for r in responses]
    assert chunks == [(0, 0, [1, 2]), (1, 0, [3]), (0, 1, [4]), (0, 0, [1, 9, 7])]


def test_folding_keeps_logprobs_aligned_with_tokens():
    def scored(offset, token, logprob):
        return RequestOutput("r", offset, (token,), new_logprobs=(logprob,),
                             num_output_tokens=offset + 1)

    assembler = ResponseAssembler("r", streaming=True, detokenize=False)
    responses = assembler.add_all([scored(0, 5, -0.5), scored(1, 6, -1.5), out(2, [7])])
    assert [list(r.chunk.token_ids) for r in responses] == [[5, 6], [7]]
    assert list(responses[0].chunk.logprobs) == [-0.5, -1.5]
