"""The engine-core pipe's codec: every Request, SamplingParams and RequestOutput field survives
the trip, errors come back as their own class, and nothing but JSON is ever parsed."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import struct

import pytest

from runtime_service import errors
from runtime_service.engine import core_codec as codec
from runtime_service.engine.executor_options import ExecutorStats
from runtime_service.engine.request import (FinishReason, LogitsMatrix, Request, RequestOutput,
                                            SamplingParams)

EVERY_SAMPLING_FIELD = SamplingParams(
    max_new_tokens=7, min_new_tokens=2, temperature=0.7, top_k=5, top_p=0.9, min_p=0.05,
    repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.3, seed=1234, end_id=2,
    ignore_eos=True, stop_token_ids=((1, 2), (3,)), stop_strings=("\n\n", "END"),
    bad_token_ids=((9,), (10, 11)), logprobs=True, top_logprobs=3, prompt_logprobs=True,
    beam_width=2, length_penalty=0.8, early_stopping="never", num_return_sequences=2,
    seed_offset=4, top_p_min=0.1, top_p_reset_id=7, top_p_decay=0.5,
    beam_search_diversity_rate=0.25, context_logits=True, generation_logits=True)


def test_every_sampling_field_differs_from_its_default_in_the_fixture():
    default = SamplingParams()
    same = [f.name for f in dataclasses.fields(SamplingParams)
            if getattr(EVERY_SAMPLING_FIELD, f.name) == getattr(default, f.name)]
    assert same == []


@pytest.mark.parametrize("sampling", [SamplingParams(), EVERY_SAMPLING_FIELD,
                                      SamplingParams(early_stopping=False, end_id=-1)])
def test_a_request_round_trips(sampling):
    request = Request("req-1", [5, 6, 7], sampling, priority=3, cache_salt="tenant-a",
                      arrival_time=123.25)
    back = codec.decode_request(codec.encode_request(request))
    assert back == request
    assert all(isinstance(ids, tuple) for ids in back.sampling.stop_token_ids)
    assert isinstance(back.sampling.stop_strings, tuple)


def test_the_prompt_travels_as_little_endian_int32_ids():
    ids = [0, 1, 2 ** 31 - 1, 128_000, 7] * 300
    body = codec.encode_request(Request("r", ids, SamplingParams()))
    raw = base64.b64decode(json.loads(body)["prompt"])
    assert raw == struct.pack(f"<{len(ids)}i", *ids)
    assert codec.decode_request(body).prompt_token_ids == ids


def test_a_prompt_of_partial_ids_is_refused():
    data = json.loads(codec.encode_request(Request("r", [1, 2], SamplingParams())))
    data["prompt"] = base64.b64encode(b"\x01\x00\x00\x00\x02").decode()
    with pytest.raises(ValueError, match="not whole int32 ids"):
        codec.decode_request(json.dumps(data).encode())


def _matrix(rows, cols, seed):
    data = b"".join(struct.pack("<f", seed + i * 0.5) for i in range(rows * cols))
    return LogitsMatrix(rows, cols, data)


OUTPUTS = [
    RequestOutput("a", 0, (1, 2, 3)),
    RequestOutput("a", 3, (4,), new_text="héllo ✓", num_prompt_tokens=5, num_output_tokens=4,
                  num_cached_tokens=2),
    RequestOutput("b", 0, (9,), new_logprobs=(-0.5,), new_top_logprobs=(((9, -0.5), (3, -1.25)),),
                  prompt_logprobs=(-math.inf, -2.0, -3.5)),
    RequestOutput("c", 0, (7, 8), finished=False, finish_reason=FinishReason.END_ID,
                  sequence_index=1, cumulative_logprob=-3.75),
    RequestOutput("d", 2, (), finished=True, finish_reason=FinishReason.ABORTED),
    RequestOutput("e", 1, (5,), finished=True, finish_reason=FinishReason.LENGTH,
                  context_logits=_matrix(3, 4, 1.0), generation_logits=_matrix(1, 4, -2.0)),
    *[RequestOutput("f", 0, (1,), finished=True, finish_reason=reason) for reason in FinishReason],
]


def test_every_output_field_round_trips_in_one_step_message():
    stats = ExecutorStats(10, 20, 3, 1, 2, 99, 4, 8, 7)
    step = codec.StepMessage(outputs=OUTPUTS, scheduled={"a": 12.5}, first_output={"a": 13.0},
                             stats=stats,
                             errors=[("g", errors.CapacityExceeded("device memory"))])
    back = codec.decode_step(codec.encode_step(step))
    assert back.outputs == OUTPUTS
    assert back.scheduled == {"a": 12.5} and back.first_output == {"a": 13.0}
    assert back.stats == stats
    [(request_id, error)] = back.errors
    assert request_id == "g" and type(error) is errors.CapacityExceeded
    assert str(error) == "device memory"


def test_decoded_outputs_are_whole_frozen_request_outputs():
    back = codec.decode_step(codec.encode_step(codec.StepMessage(outputs=OUTPUTS))).outputs
    for output in back:
        assert set(vars(output)) == {f.name for f in dataclasses.fields(RequestOutput)}
        with pytest.raises(dataclasses.FrozenInstanceError):
            output.offset = 1
        assert hash(output.new_token_ids) is not None


def test_the_fixture_sets_every_output_field_somewhere():
    default = RequestOutput("x", 0, ())
    unset = [f.name for f in dataclasses.fields(RequestOutput)
             if all(getattr(out, f.name) == getattr(default, f.name) for out in OUTPUTS)]
    assert unset == []


@pytest.mark.parametrize("cls", [errors.Unavailable, errors.InvalidRequest, errors.CapacityExceeded,
                                 errors.FailedPrecondition, errors.CorruptEngine,
                                 errors.EngineNotFound, errors.KilnError])
def test_typed_errors_come_back_as_their_class(cls):
    back = codec.decode_error(codec.loads(codec.dumps(codec.encode_error(cls("why")))))
    assert type(back) is cls and str(back) == "why"


def test_an_unknown_error_class_becomes_an_internal_kiln_error():
    back = codec.decode_error(codec.encode_error(RuntimeError("CUDA error: boom")))
    assert type(back) is errors.KilnError
    assert str(back) == "RuntimeError: CUDA error: boom"
    assert type(codec.decode_error(["__class__", "x"])) is errors.KilnError


def test_a_step_without_news_is_small():
    assert codec.encode_step(codec.StepMessage()) == b'{"o":[]}'
