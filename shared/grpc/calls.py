"""What every RPC gets, whichever server serves it, decided in one place.

The sync interceptors (shared.grpc.server) and the grpc.aio interceptor
(shared.grpc.aio_server) differ only in how they wrap a handler: a chain of
generators and plain calls there, one coroutine here. What they decide is the
same and lives here: the request id, who the caller is and whether it may call
the method, the size bound, the status code each error maps to, and the
Prometheus series each call lands in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from shared import errors, metrics
from shared.grpc.auth import Principal, TokenRegistry
from shared.kafka.events import new_id
from shared.logs import request_id_var

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
RETRY_AFTER_HEADER = "retry-after-seconds"
# Calls that must work without a token: Kubernetes probes and grpcurl discovery.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# A caller-chosen id is kept (so logs across services line up) but bounded: it is logged on every line.
_MAX_REQUEST_ID_CHARS = 128

STATUS_BY_ERROR: list[tuple[type[errors.ServiceError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]


def is_public(method: str) -> bool:
    """Health and reflection: open to every caller, token or not."""
    return method.startswith(PUBLIC_PREFIXES)


def method_name(method: str) -> str:
    """``/rlhf.v1.PolicyService/Generate`` → ``Generate``, the metrics' method label."""
    return method.rsplit("/", 1)[-1]


def request_id_from(metadata: Mapping[str, str]) -> str:
    """The caller's x-request-id (bounded), or a new one."""
    incoming = metadata.get(REQUEST_ID_HEADER, "")
    return incoming[:_MAX_REQUEST_ID_CHARS] if incoming else new_id()


@dataclass(frozen=True)
class AuthDecision:
    """The caller's principal when it may call the method; else None, with the status and why."""

    principal: Principal | None
    code: grpc.StatusCode = grpc.StatusCode.OK
    detail: str = ""


def authorize(tokens: TokenRegistry, method: str, authorization: str) -> AuthDecision:
    """A missing or unknown token → UNAUTHENTICATED; a known token whose role may not
    call ``method`` → PERMISSION_DENIED. Tokens never appear in a detail (nor in logs)."""
    principal = tokens.authenticate(authorization)
    if principal is None:
        detail = (
            "missing bearer token: send metadata 'authorization: Bearer <token>'"
            if not authorization
            else "invalid bearer token"
        )
        return AuthDecision(None, grpc.StatusCode.UNAUTHENTICATED, detail)
    if not principal.may_call(method):
        name = method.rsplit(".", 1)[-1]
        detail = f"{name} needs an operator token; this token has the {principal.role.value} role"
        return AuthDecision(None, grpc.StatusCode.PERMISSION_DENIED, detail)
    return AuthDecision(principal)


def check_message_size(request: Any, max_message_bytes: int) -> None:
    """Raise InvalidArgument naming the limit: grpc's own transport limit sits above it
    (server_options) so the caller learns the flag, not a bare RESOURCE_EXHAUSTED."""
    size = request.ByteSize() if hasattr(request, "ByteSize") else 0
    if size > max_message_bytes:
        raise errors.InvalidArgument(
            "request",
            f"message is {size} bytes; the limit is {max_message_bytes} bytes (server flag --max-message-bytes)",
        )


@dataclass(frozen=True)
class ErrorStatus:
    """How a call that raised ends: its status code, detail and trailing metadata."""

    code: grpc.StatusCode
    detail: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def status_for(exc: Exception) -> ErrorStatus:
    """shared.errors → their status codes (RESOURCE_EXHAUSTED with a retry hint); anything
    else → INTERNAL with the request id, its traceback logged. Call it inside ``except``."""
    for cls, code in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            trailing: tuple[tuple[str, str], ...] = ()
            if isinstance(exc, errors.ResourceExhausted):
                trailing = ((RETRY_AFTER_HEADER, f"{exc.retry_after_s:.3f}"),)
            return ErrorStatus(code, exc.message, trailing)
    log.exception("unhandled error in RPC")
    return ErrorStatus(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id_var.get()})")


def call_code(context: Any, default: grpc.StatusCode) -> grpc.StatusCode:
    """The code a call ended with (set by abort or set_code), else ``default``."""
    code = context.code() if hasattr(context, "code") else None
    return code if isinstance(code, grpc.StatusCode) else default


class RpcMetrics:
    """rlhf_rpc_requests_total, rlhf_rpc_latency_seconds and rlhf_rpc_in_flight for one service.
    Label lookups are cached: on a small call they cost more than the increment itself."""

    def __init__(self, service: str):
        self.service = service
        self.in_flight = metrics.RPC_IN_FLIGHT.labels(service)
        self._counters: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._latencies: dict[str, Any] = {}

    def latency(self, name: str) -> Any:
        histogram = self._latencies.get(name)
        if histogram is None:
            histogram = self._latencies[name] = metrics.RPC_LATENCY.labels(self.service, name)
        return histogram

    def record(self, name: str, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._counters.get((name, code))
        if counter is None:
            counter = self._counters[(name, code)] = metrics.RPC_REQUESTS.labels(self.service, name, code.name)
        counter.inc()
        self.latency(name).observe(seconds)
