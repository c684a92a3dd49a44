"""The SDK's errors: one class per gRPC status code the services answer with.

A service's status code and plain message become one of these on the client side, so callers
catch `kiln.errors.FailedPrecondition` without touching grpc. `from_rpc_error` is the one place
that translation happens.
"""

from __future__ import annotations


class KilnError(Exception):
    code = "UNKNOWN"


class InvalidArgument(KilnError, ValueError):
    code = "INVALID_ARGUMENT"


class ResourceExhausted(KilnError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(KilnError):
    code = "FAILED_PRECONDITION"


class NotFound(KilnError, LookupError):
    code = "NOT_FOUND"


class Unavailable(KilnError):
    code = "UNAVAILABLE"


class PermissionDenied(KilnError, PermissionError):
    code = "PERMISSION_DENIED"


class Unauthenticated(KilnError, PermissionError):
    code = "UNAUTHENTICATED"


class DeadlineExceeded(KilnError, TimeoutError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(KilnError):
    code = "CANCELLED"


class DataLoss(KilnError):
    code = "DATA_LOSS"


class ServiceFailed(KilnError):
    """A local service process (embedded default) did not start or died."""

    code = "INTERNAL"


_BY_CODE = {cls.code: cls for cls in (InvalidArgument, ResourceExhausted, FailedPrecondition,
                                      NotFound, Unavailable, PermissionDenied, Unauthenticated,
                                      DeadlineExceeded, Cancelled, DataLoss)}


def error_for(code_name: str, message: str) -> KilnError:
    cls = _BY_CODE.get(code_name, KilnError)
    error = cls(message)
    error.code = code_name
    return error


def from_rpc_error(exc) -> KilnError:
    """A grpc.RpcError (or AioRpcError) as the matching KilnError."""
    code = exc.code()
    return error_for(code.name if code is not None else "UNKNOWN", exc.details() or str(code))
