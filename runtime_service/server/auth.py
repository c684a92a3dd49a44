"""Optional transport security shared by the Runtime and Builder servers: TLS and a bearer token.

Both are off unless configured, which suits loopback and embedded use; a server that listens
beyond loopback without them logs a warning once at start. The token is compared in constant
time. Health checks stay open so load balancers and kubelets can probe without a secret.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from runtime_service.errors import InvalidRequest

log = logging.getLogger("kiln.auth")

OPEN_SERVICES = ("/grpc.health.v1.Health/",)


def read_token_file(path: str | Path) -> str:
    """The bearer token in a file (servers check it, clients send it), at least 16 characters."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise InvalidRequest(f"cannot read --token-file {path}: {exc}") from exc
    if len(token) < 16:
        raise InvalidRequest(f"the token in {path} is shorter than 16 characters")
    return token


@dataclass(frozen=True)
class TransportSecurity:
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidRequest("--tls-cert and --tls-key must be given together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise InvalidRequest(f"TLS file {path} does not exist")
        if self.token is not None and len(self.token) < 16:
            raise InvalidRequest("the bearer token must be at least 16 characters long")

    @classmethod
    def from_files(cls, tls_cert: str | None, tls_key: str | None,
                   token_file: str | None) -> "TransportSecurity":
        token = read_token_file(token_file) if token_file else None
        return cls(Path(tls_cert) if tls_cert else None, Path(tls_key) if tls_key else None, token)

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Binds `address` with TLS when configured; returns the bound port (0 on failure)."""
        if not _is_loopback(address) and self.tls_cert is None and self.token is None:
            log.warning("listening on %s without TLS or a bearer token", address)
        if self.tls_cert is None:
            return server.add_insecure_port(address)
        credentials = grpc.ssl_server_credentials(
            [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())])
        return server.add_secure_port(address, credentials)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [BearerTokenInterceptor(self.token)] if self.token else []


def _is_loopback(address: str) -> bool:
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health checks unless `authorization: Bearer <token>` matches."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given = given.encode() if isinstance(given, str) else given
        if hmac.compare_digest(given, self._expected):
            return handler
        return _denying_handler(handler)


async def _deny(request_or_iterator, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")


async def _deny_stream(request_or_iterator, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
    yield  # makes this an async generator, as streaming handlers must be


def _denying_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    kwargs = dict(request_deserializer=handler.request_deserializer,
                  response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(_deny_stream, **kwargs)
