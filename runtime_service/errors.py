"""Typed errors of the runtime and builder.

Each error names the gRPC status code it maps to, so the server edge converts them in one place
and everything below it stays free of gRPC.
"""


class KilnError(Exception):
    """Base of every error Kiln raises on purpose; `status` is a grpc.StatusCode name."""

    status = "INTERNAL"


class InvalidRequest(KilnError, ValueError):
    """The input itself is wrong: empty prompt, token id out of range, bad sampling value."""

    status = "INVALID_ARGUMENT"


class CapacityExceeded(KilnError):
    """A limit or a queue bound was hit; retrying later may succeed."""

    status = "RESOURCE_EXHAUSTED"


class FailedPrecondition(KilnError):
    """A setting the engine was not built for (beam width above max_beam_width, quantization)."""

    status = "FAILED_PRECONDITION"


class EngineNotFound(KilnError, LookupError):
    """No engine (or source) exists under the given key or URI."""

    status = "NOT_FOUND"


class Unavailable(KilnError):
    """The service is loading, draining or stopped."""

    status = "UNAVAILABLE"


class CorruptEngine(KilnError):
    """An engine's files do not match its manifest (flipped byte, missing file)."""

    status = "DATA_LOSS"


class PermissionDenied(KilnError, PermissionError):
    """A path outside the allowed roots, or a request without a valid token."""

    status = "PERMISSION_DENIED"


class Cancelled(KilnError):
    """The caller went away: a build stops at its next progress step and removes its files."""

    status = "CANCELLED"
