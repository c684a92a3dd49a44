"""The one place where Kiln's typed errors become gRPC status codes.

Everything below the server edge raises `runtime_service.errors` types and knows nothing of gRPC;
the servicers call `status_of` (unary) or `abort_with` (streaming) on the way out. An error that is
not a KilnError is a bug: it is logged with its traceback and answered INTERNAL without details.
"""

from __future__ import annotations

import logging

import grpc

from runtime_service.errors import KilnError

log = logging.getLogger("kiln.rpc")

MAX_MESSAGE_CHARS = 1000


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and plain message a client sees for `exc`."""
    if isinstance(exc, KilnError):
        code = getattr(grpc.StatusCode, exc.status, grpc.StatusCode.INTERNAL)
        return code, str(exc)[:MAX_MESSAGE_CHARS]
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Ends the call with the status that `exc` maps to (raises grpc's abort exception)."""
    code, message = status_of(exc)
    await context.abort(code, message)
