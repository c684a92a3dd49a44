"""A battery of malformed requests: each gets its documented status code with a plain message,
and the server keeps serving afterwards (checked by a normal Generate at the end)."""

from __future__ import annotations

import grpc
import pytest

from kiln.v1 import runtime_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def gen(**kwargs):
    sampling = kwargs.pop("sampling", {})
    if "text" not in kwargs and "token_ids" not in kwargs:
        kwargs["token_ids"] = runtime_pb2.TokenIds(ids=[1, 2, 3])
    return runtime_pb2.GenerateRequest(
        sampling=runtime_pb2.SamplingConfig(**{"max_new_tokens": 2, **sampling}), **kwargs)


def words(*texts):
    return [runtime_pb2.WordSequence(text=t) for t in texts]


CASES = {
    "no_input": (runtime_pb2.GenerateRequest(), INVALID, "no input"),
    "empty_text": (gen(text=""), INVALID, "empty"),
    "empty_token_ids": (gen(token_ids=runtime_pb2.TokenIds(ids=[])), INVALID, "empty"),
    "token_id_out_of_range": (gen(token_ids=runtime_pb2.TokenIds(ids=[1, 49152])), INVALID,
                              "out of range"),
    "huge_max_new_tokens": (gen(sampling={"max_new_tokens": 4_000_000_000}), INVALID,
                            "max_new_tokens"),
    "zero_max_new_tokens": (gen(sampling={"max_new_tokens": 0}), INVALID, "max_new_tokens"),
    "nan_temperature": (gen(sampling={"temperature": float("nan")}), INVALID, "temperature"),
    "negative_temperature": (gen(sampling={"temperature": -1.0}), INVALID, "temperature"),
    "zero_top_p": (gen(sampling={"top_p": 0.0}), INVALID, "top_p"),
    "huge_seed": (gen(sampling={"seed": 2 ** 64 - 1}), INVALID, "seed"),
    "huge_top_k": (gen(sampling={"top_k": 4_000_000_000}), INVALID, "top_k"),
    "prompt_over_max_input_len": (gen(token_ids=runtime_pb2.TokenIds(ids=[5] * 257)), INVALID,
                                  "max_input_len"),
    "bad_request_id": (gen(request_id="spaces are not allowed"), INVALID, "request_id"),
    "too_many_stop_words": (gen(stop_words=words(*[f"w{i}" for i in range(65)])), INVALID,
                            "at most 64"),
    "empty_stop_word": (gen(stop_words=[runtime_pb2.WordSequence()]), INVALID, "neither"),
    "beam_above_max_beam_width": (gen(sampling={"beam_width": 4}), grpc.StatusCode.FAILED_PRECONDITION,
                                  "max_beam_width"),
    "min_over_max_new_tokens": (gen(sampling={"max_new_tokens": 2, "min_new_tokens": 5}), INVALID,
                                "min_new_tokens"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_generate_gets_its_status(stub, name):
    message, code, fragment = CASES[name]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(message, timeout=30))
    assert info.value.code() == code, info.value.details()
    assert fragment in info.value.details()


def test_bytes_that_are_not_a_message_are_invalid_argument(pod):
    with grpc.insecure_channel(pod.address) as channel:
        raw = channel.unary_stream("/kiln.v1.Runtime/Generate",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            list(raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=10))
    assert info.value.code() == INVALID
    assert "not a valid kiln.v1.GenerateRequest" in info.value.details()


def test_wrong_wire_type_for_a_field_is_refused(pod):
    # field 3 (token_ids, a message) sent as a varint: parses as unknown, leaving no input.
    with grpc.insecure_channel(pod.address) as channel:
        raw = channel.unary_stream("/kiln.v1.Runtime/Generate",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            list(raw(b"\x18\x05", timeout=10))
    assert info.value.code() == INVALID


def test_oversize_message_is_resource_exhausted(stub):
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(gen(text="x" * (5 << 20)), timeout=30))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_text_too_long_for_tokenize_is_invalid(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Tokenize(runtime_pb2.TokenizeRequest(text="y" * ((1 << 20) + 1)), timeout=30)
    assert info.value.code() == INVALID


def test_load_engine_on_a_pod_without_the_switch_is_permission_denied(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.LoadEngine(runtime_pb2.LoadEngineRequest(engine_uri="/nowhere"), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_unknown_method_is_unimplemented(pod):
    with grpc.insecure_channel(pod.address) as channel:
        raw = channel.unary_unary("/kiln.v1.Runtime/Nope", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_server_still_serves_after_the_battery(stub):
    responses = list(stub.Generate(gen(sampling={"max_new_tokens": 3, "ignore_eos": True}),
                                   timeout=30))
    assert len(responses[-1].complete.token_ids) == 3
    info = stub.GetServerInfo(runtime_pb2.GetServerInfoRequest(), timeout=10)
    assert info.kv_cache.num_free_blocks == info.kv_cache.num_total_blocks
