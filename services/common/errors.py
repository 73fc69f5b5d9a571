"""One error hierarchy for visearch, free of grpc.

Cores raise these; the gRPC error interceptor (services.common.grpc_server)
maps each class to its status code, and the Python client maps status codes
back to the same classes, so callers on both sides of the wire catch one type.
"""

from __future__ import annotations


class VisearchError(Exception):
    """Base class. `status` names the gRPC status code (e.g. "INVALID_ARGUMENT")."""

    status = "INTERNAL"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        # False tells gRPC clients not to retry (the server already waited out the deadline).
        self.retryable = retryable


class InvalidArgumentError(VisearchError):
    status = "INVALID_ARGUMENT"


class NotFoundError(VisearchError):
    status = "NOT_FOUND"


class AlreadyExistsError(VisearchError):
    status = "ALREADY_EXISTS"


class FailedPreconditionError(VisearchError):
    status = "FAILED_PRECONDITION"


class AbortedError(VisearchError):
    """A concurrency check refused the call (it lost a race): retrying it as-is is wrong."""

    status = "ABORTED"


class ResourceExhaustedError(VisearchError):
    """Too big (an image over the limits: not retryable) or too busy (load shedding: raised
    with retryable=True, answered with a positive retry pushback, `retry_after_ms`)."""

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retryable: bool = False, retry_after_ms: int = 0) -> None:
        super().__init__(message, retryable=retryable)
        # When retryable: how long the client should wait first (0 = the server's default).
        self.retry_after_ms = retry_after_ms


class UnavailableError(VisearchError):
    status = "UNAVAILABLE"


class DeadlineExceededError(VisearchError):
    status = "DEADLINE_EXCEEDED"


class InternalError(VisearchError):
    status = "INTERNAL"


class UnauthenticatedError(VisearchError):
    """No API key, or one that is malformed, unknown or revoked."""

    status = "UNAUTHENTICATED"


class PermissionDeniedError(VisearchError):
    """A valid API key without the role the call needs on its collection."""

    status = "PERMISSION_DENIED"


class ConfigError(ValueError):
    """A bad configuration value; raised at start-up, never over the wire."""


ERRORS_BY_STATUS: dict[str, type[VisearchError]] = {
    cls.status: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        AbortedError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        InternalError,
        UnauthenticatedError,
        PermissionDeniedError,
    )
}
