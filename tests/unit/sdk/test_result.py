"""GenerationResult as a future and a stream, fed synthetic responses from another thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kiln.errors import ResourceExhausted
from kiln.result import _END, GenerationResult
from kiln.v1 import runtime_pb2


def chunk(offset, ids, text="", index=0):
    return runtime_pb2.GenerateResponse(chunk=runtime_pb2.Chunk(
        sequence_index=index, offset=offset, token_ids=ids, text=text))


def complete(ids, text="", reason=runtime_pb2.FINISH_REASON_LENGTH, index=0):
    return runtime_pb2.GenerateResponse(complete=runtime_pb2.Complete(
        sequence_index=index, token_ids=ids, text=text, finish_reason=reason,
        usage=runtime_pb2.Usage(prompt_tokens=2, completion_tokens=len(ids))))


def feed(result, items, delay_s=0.0):
    def run():
        for item in items:
            time.sleep(delay_s)
            result._deliver(item)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


STREAM = [chunk(0, [1], "a"), chunk(1, [2], "b"), chunk(1, [2], "b"), chunk(2, [3], "c"),
          complete([1, 2, 3], "abc"), _END]


def test_offsets_place_tokens_and_drop_duplicates():
    result = GenerationResult("r", "p", None, streaming=True)
    feed(result, STREAM).join()
    assert result.result(timeout=1).token_ids == [1, 2, 3]
    assert result.text == "abc" and result.finish_reason == "length" and result.finished
    assert result.usage["completion_tokens"] == 3


def test_sync_streaming_yields_once_per_chunk_in_order():
    result = GenerationResult("r", "p", None, streaming=True)
    feed(result, STREAM, delay_s=0.01)
    seen = [list(r.token_ids) for r in result]
    assert seen == [[1], [1, 2], [1, 2], [1, 2, 3]]


def test_async_streaming_and_aresult():
    async def main():
        result = GenerationResult("r", "p", None, streaming=True)
        feed(result, STREAM, delay_s=0.01)
        seen = [r.text async for r in result]
        other = GenerationResult("s", "p", None, streaming=False)
        feed(other, [complete([4, 5], "de"), _END], delay_s=0.01)
        return seen, await other.aresult(timeout=5)
    seen, other = asyncio.run(main())
    assert seen == ["a", "ab", "ab", "abc"] and other.token_ids == [4, 5]


def test_result_timeout_then_success():
    result = GenerationResult("r", "p", None, streaming=False)
    with pytest.raises(TimeoutError):
        result.result(timeout=0.05)
    feed(result, [complete([7]), _END])
    assert result.result(timeout=5).token_ids == [7]


def test_errors_surface_from_result_and_iteration():
    result = GenerationResult("r", "p", None, streaming=True)
    feed(result, [chunk(0, [1]), ResourceExhausted("queue full")]).join()
    with pytest.raises(ResourceExhausted):
        list(result)
    with pytest.raises(ResourceExhausted):
        result.result(timeout=1)


def test_beams_are_lists_and_snapshots_replace_text():
    result = GenerationResult("r", "p", None, streaming=True)
    feed(result, [chunk(0, [1, 2], "xy", 0), chunk(0, [3, 4], "zw", 1),
                  chunk(0, [1, 9], "xq", 0), complete([1, 9], "xq", index=0),
                  complete([3, 4], "zw", index=1), _END]).join()
    result.result(timeout=1)
    assert result.token_ids == [[1, 9], [3, 4]] and result.text == ["xq", "zw"]
