"""Errors at the edges, in one place: typed Kiln errors to gRPC status codes for the server, and
gRPC status codes to process exit codes for the batch CLI (what a Kubernetes Job acts on).

Exit codes: 0 built or found; 2 bad input (do not retry: INVALID_ARGUMENT, NOT_FOUND,
PERMISSION_DENIED, UNAUTHENTICATED, usage errors); 3 unsupported settings (FAILED_PRECONDITION);
4 corrupt data (DATA_LOSS); 75 transient (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
ABORTED: retry); 1 anything else.
"""

from __future__ import annotations

import logging

import grpc

from runtime_service.errors import KilnError

log = logging.getLogger("kiln.builder")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_UNSUPPORTED = 3
EXIT_CORRUPT = 4
EXIT_RETRY = 75

_EXIT_CODES = {
    "INVALID_ARGUMENT": EXIT_BAD_INPUT, "NOT_FOUND": EXIT_BAD_INPUT,
    "PERMISSION_DENIED": EXIT_BAD_INPUT, "UNAUTHENTICATED": EXIT_BAD_INPUT,
    "OUT_OF_RANGE": EXIT_BAD_INPUT, "ALREADY_EXISTS": EXIT_BAD_INPUT,
    "FAILED_PRECONDITION": EXIT_UNSUPPORTED, "DATA_LOSS": EXIT_CORRUPT,
    "UNAVAILABLE": EXIT_RETRY, "RESOURCE_EXHAUSTED": EXIT_RETRY,
    "DEADLINE_EXCEEDED": EXIT_RETRY, "ABORTED": EXIT_RETRY,
}


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for an exception raised below the server."""
    if isinstance(exc, KilnError):
        return getattr(grpc.StatusCode, exc.status, grpc.StatusCode.INTERNAL), str(exc)
    if isinstance(exc, MemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "the builder ran out of memory"
    if isinstance(exc, OSError) and exc.errno == 28:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "the builder's disk is full"
    log.exception("unexpected builder error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal builder error: {type(exc).__name__}"


def exit_code(status_name: str) -> int:
    return EXIT_OK if status_name == "OK" else _EXIT_CODES.get(status_name, EXIT_INTERNAL)


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exit_code(exc.code().name)
    return exit_code(grpc_status(exc)[0].name)
