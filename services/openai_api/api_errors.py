"""Errors in OpenAI's format, and the mapping from gRPC status codes to them.

Every error the front door answers is ``{"error": {"message", "type", "param",
"code"}}`` with an HTTP status the official clients turn into the right
exception (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
429 RateLimitError, ...). No grpc here: the adapter (upstream.py) hands over a
status code's name and details as an UpstreamError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# gRPC status name -> (HTTP status, OpenAI error type, error code).
_BY_GRPC_CODE: dict[str, tuple[int, str, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error", "invalid_value"),
    "UNAUTHENTICATED": (401, "authentication_error", "invalid_api_key"),
    "PERMISSION_DENIED": (403, "permission_error", "permission_denied"),
    "NOT_FOUND": (404, "invalid_request_error", "not_found"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error", "rate_limit_exceeded"),
    "UNAVAILABLE": (503, "server_error", "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "server_error", "timeout"),
}
_OTHER = (500, "server_error", "internal_error")
# shared.errors.InvalidArgument details read "<field>: <what is wrong>".
_FIELD_DETAILS = re.compile(r"^(?P<field>[A-Za-z_][\w.\[\]'\"]*): (?P<rest>.*)$", re.DOTALL)

# (gRPC field prefix, request body param or None): how a field the service names maps back to the body.
ParamMap = Sequence[tuple[str, str | None]]


class ApiError(Exception):
    """An answer in OpenAI's error format with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class UpstreamError(Exception):
    """A gRPC call failed: the status code's name, its details, and the retry hint if the server sent one."""

    code: str
    details: str
    retry_after_s: float | None = None
    service: str = ""

    def __str__(self) -> str:
        return f"{self.service} {self.code}: {self.details}"


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    """400: ``param`` has a value we cannot use; the message starts with the param so a person finds it."""
    text = f"{param}: {message}" if param else message
    return ApiError(400, text, param=param, code=code)


def missing(param: str) -> ApiError:
    return invalid(param, "is required", code="missing_required_parameter")


def unsupported(param: str, why: str) -> ApiError:
    """400 for a field with a meaning this server cannot honour (rather than ignoring it silently)."""
    return invalid(param, f"is not supported by this server: {why}", code="unsupported_parameter")


def unknown_param(param: str) -> ApiError:
    return invalid(param, "unrecognized request argument", code="unknown_parameter")


def model_not_found(model: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"The model {model!r} does not exist here; this server serves {served!r} (GET /v1/models lists it).",
        param="model",
        code="model_not_found",
    )


def unauthenticated(given: bool) -> ApiError:
    message = (
        "invalid bearer token"
        if given
        else "missing bearer token: send header 'Authorization: Bearer <token>' (the OpenAI clients' api_key)"
    )
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def not_found_route(method: str, path: str) -> ApiError:
    return ApiError(
        404, f"no route {method} {path}; see GET /v1/models and POST /v1/chat/completions", code="not_found"
    )


def method_not_allowed(method: str, path: str, allowed: str) -> ApiError:
    return ApiError(405, f"{method} is not allowed on {path}; use {allowed}", code="method_not_allowed")


def too_busy(limit: int) -> ApiError:
    return ApiError(
        429,
        f"this front door is handling {limit} requests already (--max-workers); retry shortly",
        type="rate_limit_error",
        code="rate_limit_exceeded",
        retry_after_s=1.0,
    )


def internal(request_id: str) -> ApiError:
    return ApiError(500, f"internal error (request id {request_id})", type="server_error", code="internal_error")


def _map_field(field: str, params: ParamMap) -> tuple[bool, str | None]:
    """(whether a mapping matched, the body param) for a field the gRPC service named."""
    for prefix, param in params:
        if field == prefix:
            return True, param
        if field.startswith((prefix + ".", prefix + "[")) and param is not None:
            return True, param + field[len(prefix) :]
    return False, None


def from_upstream(error: UpstreamError, params: ParamMap = ()) -> ApiError:
    """The OpenAI-format error for a failed gRPC call. For INVALID_ARGUMENT the
    field the service named is translated to the request body's param (with
    ``params``) and the message says the body's name, not the proto's."""
    status, kind, code = _BY_GRPC_CODE.get(error.code, _OTHER)
    message, param = error.details or error.code, None
    if error.code == "INVALID_ARGUMENT":
        match = _FIELD_DETAILS.match(message)
        if match:
            matched, param = _map_field(match["field"], params)
            if matched:
                message = f"{param}: {match['rest']}" if param else match["rest"]
    elif status >= 500 and error.service:
        message = f"{error.service} service: {message}"
    return ApiError(status, message, type=kind, param=param, code=code, retry_after_s=error.retry_after_s)
