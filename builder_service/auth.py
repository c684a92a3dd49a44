"""Optional bearer-token check for the gRPC servers: `authorization: Bearer <token>` metadata.

Health checks stay open so that Kubernetes probes need no secret; every other method, reflection
included, needs the token when one is configured.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from runtime_service.errors import InvalidRequest

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token_file(path: str | Path) -> str:
    token = Path(path).read_text().strip()
    if len(token) < 16:
        raise InvalidRequest(f"the token in {path} is shorter than 16 characters")
    return token


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def abort(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong bearer token (authorization metadata)")

    async def abort_stream(request_or_iterator, context):
        await abort(request_or_iterator, context)
        yield  # an async generator, as a streaming handler must be

    kwargs = dict(request_deserializer=handler.request_deserializer,
                  response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given = given.encode() if isinstance(given, str) else given
        if hmac.compare_digest(given, self._expected):
            return handler
        return _deny(handler)
