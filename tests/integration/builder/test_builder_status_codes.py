"""Bytes that are not the request message are INVALID_ARGUMENT on every Builder RPC, and so are
file lists no file system can hold (issue 15, defect 6: UNKNOWN and INTERNAL before)."""

from __future__ import annotations

import grpc
import pytest
from kiln.v1 import builder_pb2

from builder_service.server import SERVICE_NAME

GARBAGE = b"\xff\xff\xff\xff"
SHA = "ab" * 32


@pytest.fixture(scope="module")
def channel(builder_server):
    with grpc.insecure_channel(builder_server.address) as channel:
        yield channel


@pytest.mark.parametrize("method", ["GetEngine", "ListEngines", "DeleteEngine",
                                    "FindMissingBlobs"])
def test_undecodable_unary_requests_are_invalid_argument(channel, builder_server, method):
    call = channel.unary_unary(f"/{SERVICE_NAME}/{method}")
    with pytest.raises(grpc.RpcError) as info:
        call(GARBAGE, metadata=builder_server.metadata, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


def test_an_undecodable_build_request_is_invalid_argument(channel, builder_server):
    call = channel.unary_stream(f"/{SERVICE_NAME}/Build")
    with pytest.raises(grpc.RpcError) as info:
        list(call(GARBAGE, metadata=builder_server.metadata, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


def test_an_undecodable_upload_chunk_is_invalid_argument(channel, builder_server):
    call = channel.stream_unary(f"/{SERVICE_NAME}/UploadSource")
    with pytest.raises(grpc.RpcError) as info:
        call(iter([GARBAGE]), metadata=builder_server.metadata, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


@pytest.mark.parametrize("paths", [["x", "x/y"], ["a\x00b"], ["n" * 300],
                                   ["/".join(["d" * 200] * 8)]])
def test_file_lists_no_file_system_holds_are_invalid_argument(channel, builder_server, paths):
    files = builder_pb2.SourceFileList(files=[
        builder_pb2.SourceFile(path=path, sha256=SHA, size_bytes=0) for path in paths])
    call = channel.stream_unary(f"/{SERVICE_NAME}/UploadSource",
                                request_serializer=builder_pb2.SourceChunk.SerializeToString,
                                response_deserializer=builder_pb2.SourceRef.FromString)
    with pytest.raises(grpc.RpcError) as info:
        call(iter([builder_pb2.SourceChunk(files=files)]), metadata=builder_server.metadata,
             timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
