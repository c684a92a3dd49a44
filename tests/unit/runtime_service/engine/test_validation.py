"""validate_request: every bad input raises the right typed error, naming the field."""

import dataclasses
import re

import pytest

from runtime_service.errors import CapacityExceeded, FailedPrecondition, InvalidRequest
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.engine.validation import (MAX_STOP_SEQUENCE_LEN, MAX_STOP_SEQUENCES, EngineLimits,
                                        validate_request)

LIMITS = EngineLimits(vocab_size=100, max_input_len=32, max_seq_len=64, max_num_tokens=16,
                      max_beam_width=1, max_kv_tokens=48)


def request(prompt=(1, 2, 3), request_id="req-1", **sampling):
    sampling.setdefault("max_new_tokens", 8)
    return Request(request_id, list(prompt), SamplingParams(**sampling))


def test_a_valid_request_passes():
    validate_request(request(), LIMITS)


@pytest.mark.parametrize("overrides", [
    dict(prompt=[99] * 32),                                    # exactly max_input_len
    dict(prompt=[0]),
    dict(temperature=0.0), dict(temperature=100.0),
    dict(top_k=0), dict(top_k=100),                            # top_k == vocab
    dict(top_p=1.0), dict(top_p=1e-6),
    dict(min_p=0.0), dict(min_p=1.0),
    dict(repetition_penalty=1e-3),
    dict(presence_penalty=-2.0, frequency_penalty=2.0),
    dict(seed=0), dict(seed=2 ** 63 - 1),
    dict(min_new_tokens=8),                                    # == max_new_tokens
    dict(end_id=-1), dict(end_id=99),
    dict(stop_token_ids=((1,),) * MAX_STOP_SEQUENCES),
    dict(stop_token_ids=((5,) * MAX_STOP_SEQUENCE_LEN,)),
    dict(bad_token_ids=((1, 2), (3,))),
    dict(stop_strings=("\n\n", "END")),
    dict(beam_width=1),
    dict(prompt=[1] * 8, max_new_tokens=40),                   # 48 tokens: the KV cache exactly
])
def test_values_at_the_edges_of_the_allowed_ranges_pass(overrides):
    validate_request(request(**overrides), LIMITS)


@pytest.mark.parametrize("overrides, field", [
    (dict(request_id=""), "request_id"),
    (dict(request_id="x" * 257), "request_id"),
    (dict(prompt=[]), "prompt"),
    (dict(prompt=[1] * 33), "max_input_len"),
    (dict(prompt=[100]), "token id"),
    (dict(prompt=[1, -1]), "token id"),
    (dict(prompt=[1, True]), "token id"),
    (dict(prompt=[1, 2.0]), "token id"),
    (dict(prompt=[1, "2"]), "token id"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=65), "max_new_tokens"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(min_new_tokens=9), "min_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=101), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_p=-0.5), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(presence_penalty=101.0), "presence_penalty"),
    (dict(frequency_penalty=-101.0), "frequency_penalty"),
    (dict(length_penalty=1e9), "length_penalty"),
    (dict(seed=-1), "seed"),
    (dict(seed=2 ** 63), "seed"),
    (dict(seed=True), "seed"),
    (dict(end_id=100), "end_id"),
    (dict(end_id=-2), "end_id"),
    (dict(stop_token_ids=((1,),) * (MAX_STOP_SEQUENCES + 1)), "stop_token_ids"),
    (dict(stop_token_ids=((1,), ())), "stop_token_ids"),
    (dict(stop_token_ids=((5,) * (MAX_STOP_SEQUENCE_LEN + 1),)), "stop_token_ids"),
    (dict(stop_token_ids=((1, 100),)), "stop_token_ids"),
    (dict(bad_token_ids=((),)), "bad_token_ids"),
    (dict(bad_token_ids=((-3,),)), "bad_token_ids"),
    (dict(stop_strings=("",)), "stop_strings"),
    (dict(stop_strings=("x",) * (MAX_STOP_SEQUENCES + 1)), "stop_strings"),
    (dict(stop_strings=("x" * (MAX_STOP_SEQUENCE_LEN + 1),)), "stop_strings"),
    (dict(beam_width=0), "beam_width"),
])
def test_bad_input_is_an_invalid_request_naming_the_field(overrides, field):
    with pytest.raises(InvalidRequest, match=field) as caught:
        validate_request(request(**overrides), LIMITS)
    assert caught.value.status == "INVALID_ARGUMENT"


def test_a_prompt_that_fills_max_seq_len_is_rejected():
    limits = dataclasses.replace(LIMITS, max_input_len=64, max_kv_tokens=128)
    validate_request(request(prompt=[1] * 63, max_new_tokens=1), limits)
    with pytest.raises(InvalidRequest, match="max_seq_len"):
        validate_request(request(prompt=[1] * 64, max_new_tokens=1), limits)


def test_without_chunked_prefill_the_prompt_must_fit_one_step():
    limits = dataclasses.replace(LIMITS, enable_chunked_prefill=False)
    validate_request(request(prompt=[1] * 16), limits)
    with pytest.raises(InvalidRequest, match="max_num_tokens"):
        validate_request(request(prompt=[1] * 17), limits)
    validate_request(request(prompt=[1] * 17), LIMITS)          # chunked prefill splits it


@pytest.mark.parametrize("beam_width, max_beam_width", [(2, 1), (5, 4)])
def test_beam_width_beyond_the_engine_is_a_failed_precondition(beam_width, max_beam_width):
    limits = dataclasses.replace(LIMITS, max_beam_width=max_beam_width)
    with pytest.raises(FailedPrecondition, match="max_beam_width") as caught:
        validate_request(request(beam_width=beam_width), limits)
    assert caught.value.status == "FAILED_PRECONDITION"


@pytest.mark.parametrize("prompt_len, max_new_tokens", [(8, 41), (30, 30), (40, 200)])
def test_a_request_larger_than_the_kv_cache_is_capacity_exceeded(prompt_len, max_new_tokens):
    limits = dataclasses.replace(LIMITS, max_input_len=64, max_seq_len=256)
    with pytest.raises(CapacityExceeded, match="KV cache") as caught:
        validate_request(request(prompt=[1] * prompt_len, max_new_tokens=max_new_tokens), limits)
    assert caught.value.status == "RESOURCE_EXHAUSTED"


def test_max_seq_len_caps_the_kv_requirement():
    limits = dataclasses.replace(LIMITS, max_kv_tokens=64)
    validate_request(request(prompt=[1] * 30, max_new_tokens=64), limits)    # capped at 64



@pytest.mark.parametrize("field, value", [("top_k", 2.5), ("max_new_tokens", 4.0),
                                          ("seed", 1.5), ("beam_width", True)])
def test_integer_fields_refuse_non_integers(field, value):
    with pytest.raises(InvalidRequest, match=field):
        validate_request(request(**{field: value}), LIMITS)


@pytest.mark.parametrize("bad, named", [
    ([5, 7, 100, -3], "100"),        # the first bad id is named, not the smallest or largest
    ([5, None, 7], "None"),
    ([5, __import__("numpy").int64(7)], "np.int64(7)"),    # not a plain int
])
def test_the_first_bad_token_id_is_named(bad, named):
    with pytest.raises(InvalidRequest, match=f"token id {re.escape(named)} "):
        validate_request(request(prompt=bad), LIMITS)


def test_int_subclasses_within_the_vocabulary_pass():
    class TokenId(int):
        pass

    validate_request(request(prompt=[TokenId(3), 4]), LIMITS)
