"""Errors a core module raises to say what went wrong, without importing grpc.

The gRPC error interceptor (shared.grpc.server) maps each to its status code,
so every RPC answers bad input the same way: the field, the rule, the value.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: ``message`` is shown to the caller as the status details."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """Maps to INVALID_ARGUMENT. ``field`` is the request field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ResourceExhausted(ServiceError):
    """Maps to RESOURCE_EXHAUSTED, with a retry-after hint in trailing metadata."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    """Maps to UNAVAILABLE: not ready yet, shutting down, or a dependency is down."""


class NotFound(ServiceError):
    """Maps to NOT_FOUND."""


class FailedPrecondition(ServiceError):
    """Maps to FAILED_PRECONDITION: the request is valid but the state forbids it."""


class PermissionDenied(ServiceError):
    """Maps to PERMISSION_DENIED: the caller is known but may not do this. ``field`` is the field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def require(condition: bool, field: str, message: str) -> None:
    """Raise InvalidArgument(field, message) unless ``condition`` holds."""
    if not condition:
        raise InvalidArgument(field, message)
