"""Request parsing that never fails inside gRPC: bytes that are not the expected message become
a `Malformed` marker, which the handler turns into INVALID_ARGUMENT (gRPC itself would answer
UNKNOWN for a unary call and INTERNAL for a client stream). Shared by the Runtime and Builder."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from runtime_service.errors import InvalidRequest


class Malformed:
    def __init__(self, message: str):
        self.message = message


def lenient(message_cls):
    """A request deserializer for `message_cls` that returns Malformed instead of raising."""
    def parse(data: bytes):
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return Malformed(f"the request is not a valid {message_cls.DESCRIPTOR.full_name}: {exc}")
    return parse


def parsed(request):
    """The request, or InvalidRequest when it did not parse."""
    if isinstance(request, Malformed):
        raise InvalidRequest(request.message)
    return request
