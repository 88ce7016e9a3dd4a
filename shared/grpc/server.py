"""gRPC server plumbing every service uses: the thread-pool server and its interceptors.

What a servicer gets for free: health checking (NOT_SERVING until the service
says it is ready, and again from SIGTERM on), server reflection, bounded
message sizes, TLS (optionally mutual), bearer-token auth with roles
(shared.grpc.auth), a request id per call, Prometheus metrics per RPC, the mapping
of shared.errors to status codes, and a graceful shutdown that lets in-flight
calls finish. Start-up and shutdown are shared.grpc.lifecycle's, and what each
call gets is decided in shared.grpc.calls; both are shared with the grpc.aio
server (shared.grpc.aio_server). The interceptors here are separate classes
(after grpc's examples/python/interceptors) so each does one thing, and they
handle streaming responses too (the policy's GenerateStream).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health

from shared.grpc import calls
from shared.grpc.auth import Principal, TokenRegistry, principal_var
from shared.grpc.calls import REQUEST_ID_HEADER, RETRY_AFTER_HEADER
from shared.grpc.lifecycle import (
    HEALTH_PORT_MAX_RPCS,
    HEALTH_PORT_OPTIONS,
    ServerLifecycle,
    ServiceBinding,
    max_concurrent_rpcs,
    server_options,
    wants_health_port,
)
from shared.logs import request_id_var
from shared.service_config import ServiceConfig

# Importers of this module have always found these here (the front door, tests).
__all__ = [
    "REQUEST_ID_HEADER",
    "RETRY_AFTER_HEADER",
    "AuthInterceptor",
    "ErrorMappingInterceptor",
    "GrpcServer",
    "MetricsInterceptor",
    "RequestIdInterceptor",
    "ServiceBinding",
]

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior, bool], Behavior]) -> grpc.RpcMethodHandler:
    """Return ``handler`` with its behaviour replaced by ``wrap(behavior, streaming)``."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, True), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, False), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream, True), handler.request_deserializer, handler.response_serializer
    )


class _WrappingInterceptor(grpc.ServerInterceptor):
    """Base: subclasses implement ``around(method, behavior, request, context)``
    for unary responses; streaming responses go through ``around_stream``."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            if streaming:
                return lambda request, context: self.around_stream(method, behavior, request, context)
            return lambda request, context: self.around(method, behavior, request, context)

        return _wrap_handler(handler, wrap)

    def around(self, method, behavior, request, context):
        return behavior(request, context)

    def around_stream(self, method, behavior, request, context):
        yield from behavior(request, context)


class MetricsInterceptor(_WrappingInterceptor):
    """rlhf_rpc_requests_total{code} and rlhf_rpc_latency_seconds per method."""

    def __init__(self, service: str):
        self.service = service
        self.metrics = calls.RpcMetrics(service)

    def _observe(self, method: str, context, start: float, failed: bool) -> None:
        code = calls.call_code(context, grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
        self.metrics.record(calls.method_name(method), code, time.perf_counter() - start)

    def around(self, method, behavior, request, context):
        start = time.perf_counter()
        self.metrics.in_flight.inc()
        failed = True
        try:
            response = behavior(request, context)
            failed = False
            return response
        finally:
            self.metrics.in_flight.dec()
            self._observe(method, context, start, failed)

    def around_stream(self, method, behavior, request, context):
        start = time.perf_counter()
        self.metrics.in_flight.inc()
        failed = True
        try:
            yield from behavior(request, context)
            failed = False
        finally:
            self.metrics.in_flight.dec()
            self._observe(method, context, start, failed)


class RequestIdInterceptor(_WrappingInterceptor):
    """Takes x-request-id from the caller or makes one; logs carry it and the
    caller gets it back in the initial metadata."""

    def _begin(self, context) -> Any:
        request_id = calls.request_id_from(dict(context.invocation_metadata() or ()))
        context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
        return request_id_var.set(request_id)

    def around(self, method, behavior, request, context):
        token = self._begin(context)
        try:
            return behavior(request, context)
        finally:
            request_id_var.reset(token)

    def around_stream(self, method, behavior, request, context):
        token = self._begin(context)
        try:
            yield from behavior(request, context)
        finally:
            request_id_var.reset(token)


class AuthInterceptor(grpc.ServerInterceptor):
    """Bearer token → principal with a role (shared.grpc.calls.authorize); health and reflection stay open.

    While the call is served, ``shared.grpc.auth.current_principal()`` is its
    caller. Tokens are never logged.
    """

    def __init__(self, registry: TokenRegistry):
        self.registry = registry

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if calls.is_public(method):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        decision = calls.authorize(self.registry, method, given)
        principal = decision.principal
        if principal is None:
            return _wrap_handler(handler, _denying(decision.code, decision.detail))
        return _wrap_handler(handler, lambda behavior, streaming: _as_caller(principal, behavior, streaming))


def _denying(code: grpc.StatusCode, detail: str) -> Callable[[Behavior, bool], Behavior]:
    def deny(behavior: Behavior, streaming: bool) -> Behavior:
        def abort(request, context):
            context.abort(code, detail)

        return abort

    return deny


def _as_caller(principal: Principal, behavior: Behavior, streaming: bool) -> Behavior:
    """``behavior`` run with ``principal`` as shared.grpc.auth.current_principal()."""
    if streaming:

        def run_stream(request, context):
            token = principal_var.set(principal)
            try:
                yield from behavior(request, context)
            finally:
                principal_var.reset(token)

        return run_stream

    def run(request, context):
        token = principal_var.set(principal)
        try:
            return behavior(request, context)
        finally:
            principal_var.reset(token)

    return run


class ErrorMappingInterceptor(_WrappingInterceptor):
    """shared.errors → status codes; a request over the size limit → INVALID_ARGUMENT;
    any other exception → INTERNAL with the request id, logged with its traceback
    (shared.grpc.calls.status_for)."""

    def __init__(self, max_message_bytes: int):
        self.max_message_bytes = max_message_bytes

    @staticmethod
    def _abort(context, exc: Exception) -> None:
        status = calls.status_for(exc)
        if status.trailing_metadata:
            context.set_trailing_metadata(status.trailing_metadata)
        context.abort(status.code, status.detail)

    def around(self, method, behavior, request, context):
        try:
            calls.check_message_size(request, self.max_message_bytes)
            return behavior(request, context)
        except Exception as exc:  # noqa: BLE001
            if _is_grpc_abort(exc):
                raise
            self._abort(context, exc)

    def around_stream(self, method, behavior, request, context):
        try:
            calls.check_message_size(request, self.max_message_bytes)
            yield from behavior(request, context)
        except Exception as exc:  # noqa: BLE001
            if _is_grpc_abort(exc):
                raise
            self._abort(context, exc)


def _is_grpc_abort(exc: Exception) -> bool:
    # context.abort() raises a bare Exception subclass private to grpc; let it through.
    return type(exc).__module__.startswith("grpc")


class GrpcServer(ServerLifecycle):
    """A grpc.Server on a thread pool with health, reflection and the four interceptors.
    Its servicers' methods are plain functions (generators for streaming responses)."""

    def __init__(self, config: ServiceConfig, service: str, bindings: Iterable[ServiceBinding]):
        super().__init__(config, service, bindings)
        interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor(service), RequestIdInterceptor()]
        if self.tokens:
            interceptors.append(AuthInterceptor(self.tokens))
        interceptors.append(ErrorMappingInterceptor(config.max_message_bytes))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=f"{service}-rpc"),
            interceptors=interceptors,
            options=server_options(config),
            maximum_concurrent_rpcs=max_concurrent_rpcs(config),
        )
        self.health = health.HealthServicer()
        self.health_server = None
        if wants_health_port(config):
            self.health_server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{service}-health"),
                options=HEALTH_PORT_OPTIONS,
                maximum_concurrent_rpcs=HEALTH_PORT_MAX_RPCS,
            )
        self.install()
        self.set_serving(False)

    def _start_server(self, server: grpc.Server) -> None:
        server.start()

    def _begin_stop(self, server: grpc.Server, grace_s: float) -> Callable[[], None]:
        stopped = server.stop(grace_s)  # refuses new calls before it returns
        return lambda: stopped.wait()

    def _set_health(self, status: int) -> None:
        for name in self.health_names:
            self.health.set(name, status)
