"""gRPC server plumbing every service uses.

What a servicer gets for free: health checking (NOT_SERVING until the service
says it is ready, and again from SIGTERM on), server reflection, bounded
message sizes, TLS (optionally mutual), bearer-token auth with roles
(shared.grpc.auth), a request id per call, Prometheus metrics per RPC, the mapping
of shared.errors to status codes, and a graceful shutdown that lets in-flight
calls finish. The interceptors are separate
classes (after grpc's examples/python/interceptors) so each does one thing.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared import errors, metrics
from shared.config import ServiceConfig
from shared.grpc.auth import Principal, TokenRegistry, principal_var
from shared.grpc.tls import server_tls
from shared.kafka.events import new_id
from shared.logs import request_id_var

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
RETRY_AFTER_HEADER = "retry-after-seconds"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Calls that must work without a token: Kubernetes probes and grpcurl discovery.
_PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# grpc's own transport limit sits above ours so an oversized request reaches
# the interceptor and gets INVALID_ARGUMENT with the limit, not a bare
# RESOURCE_EXHAUSTED; beyond this the transport refuses it outright.
_TRANSPORT_LIMIT_FACTOR = 4

_STATUS_BY_ERROR: list[tuple[type[errors.ServiceError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
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

    def _observe(self, method: str, context, start: float, failed: bool) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code is None:
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        name = method.rsplit("/", 1)[-1]
        metrics.RPC_REQUESTS.labels(self.service, name, code.name).inc()
        metrics.RPC_LATENCY.labels(self.service, name).observe(time.perf_counter() - start)

    def around(self, method, behavior, request, context):
        start = time.perf_counter()
        metrics.RPC_IN_FLIGHT.labels(self.service).inc()
        failed = True
        try:
            response = behavior(request, context)
            failed = False
            return response
        finally:
            metrics.RPC_IN_FLIGHT.labels(self.service).dec()
            self._observe(method, context, start, failed)

    def around_stream(self, method, behavior, request, context):
        start = time.perf_counter()
        metrics.RPC_IN_FLIGHT.labels(self.service).inc()
        failed = True
        try:
            yield from behavior(request, context)
            failed = False
        finally:
            metrics.RPC_IN_FLIGHT.labels(self.service).dec()
            self._observe(method, context, start, failed)


class RequestIdInterceptor(_WrappingInterceptor):
    """Takes x-request-id from the caller or makes one; logs carry it and the
    caller gets it back in the initial metadata."""

    def _begin(self, context) -> Any:
        incoming = dict(context.invocation_metadata() or ()).get(REQUEST_ID_HEADER, "")
        request_id = incoming[:128] if incoming else new_id()
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
    """Bearer token → principal with a role (shared.grpc.auth); health and reflection stay open.

    A missing or unknown token → UNAUTHENTICATED; a known token whose role may
    not call the method → PERMISSION_DENIED. While the call is served,
    ``shared.grpc.auth.current_principal()`` is its caller. Tokens are never logged.
    """

    def __init__(self, registry: TokenRegistry):
        self.registry = registry

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(_PUBLIC_PREFIXES):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        principal = self.registry.authenticate(given)
        if principal is None:
            detail = (
                "missing bearer token: send metadata 'authorization: Bearer <token>'"
                if not given
                else "invalid bearer token"
            )
            return _wrap_handler(handler, _denying(grpc.StatusCode.UNAUTHENTICATED, detail))
        if not principal.may_call(method):
            name = method.rsplit(".", 1)[-1]
            detail = f"{name} needs an operator token; this token has the {principal.role.value} role"
            return _wrap_handler(handler, _denying(grpc.StatusCode.PERMISSION_DENIED, detail))
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
    any other exception → INTERNAL with the request id, logged with its traceback."""

    def __init__(self, max_message_bytes: int):
        self.max_message_bytes = max_message_bytes

    def _check_size(self, request) -> None:
        size = request.ByteSize() if hasattr(request, "ByteSize") else 0
        if size > self.max_message_bytes:
            raise errors.InvalidArgument(
                "request",
                f"message is {size} bytes; the limit is {self.max_message_bytes} bytes "
                "(server flag --max-message-bytes)",
            )

    def _abort(self, context, exc: Exception) -> None:
        for cls, code in _STATUS_BY_ERROR:
            if isinstance(exc, cls):
                if isinstance(exc, errors.ResourceExhausted):
                    context.set_trailing_metadata(((RETRY_AFTER_HEADER, f"{exc.retry_after_s:.3f}"),))
                context.abort(code, exc.message)
        log.exception("unhandled error in RPC")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id_var.get()})")

    def around(self, method, behavior, request, context):
        try:
            self._check_size(request)
            return behavior(request, context)
        except errors.ServiceError as exc:
            self._abort(context, exc)
        except Exception as exc:  # noqa: BLE001
            if _is_grpc_abort(exc):
                raise
            self._abort(context, exc)

    def around_stream(self, method, behavior, request, context):
        try:
            self._check_size(request)
            yield from behavior(request, context)
        except errors.ServiceError as exc:
            self._abort(context, exc)
        except Exception as exc:  # noqa: BLE001
            if _is_grpc_abort(exc):
                raise
            self._abort(context, exc)


def _is_grpc_abort(exc: Exception) -> bool:
    # context.abort() raises a bare Exception subclass private to grpc; let it through.
    return type(exc).__module__.startswith("grpc")


@dataclass(frozen=True)
class ServiceBinding:
    """One proto service: its generated add_*_to_server, the servicer, its full name."""

    add_to_server: Callable[[Any, grpc.Server], None]
    servicer: Any
    full_name: str


class GrpcServer:
    """A configured grpc.Server with health, reflection and the interceptors."""

    def __init__(self, config: ServiceConfig, service: str, bindings: Iterable[ServiceBinding]):
        self.config = config
        self.service = service
        self.bindings = list(bindings)
        self.health = health.HealthServicer()
        self.port: int | None = None
        self._stopped = threading.Event()
        interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor(service), RequestIdInterceptor()]
        tokens = TokenRegistry.from_config(config)
        self._auth = bool(tokens)
        if tokens:
            interceptors.append(AuthInterceptor(tokens))
        interceptors.append(ErrorMappingInterceptor(config.max_message_bytes))
        transport_limit = config.max_message_bytes * _TRANSPORT_LIMIT_FACTOR
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", transport_limit),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if config.max_connection_age_s > 0:
            # GOAWAY after the age; calls in flight then have the grace period to finish.
            options += [
                ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(max(config.grace_period_s, 1.0) * 1000)),
            ]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=f"{service}-rpc"),
            interceptors=interceptors,
            options=options,
            maximum_concurrent_rpcs=config.max_workers * 4,
        )
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [b.full_name for b in self.bindings]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], self.server
        )
        self.health_port: int | None = None
        self._health_server = self._plaintext_health_server() if config.health_port >= 0 else None
        self.set_serving(False)

    def _plaintext_health_server(self) -> grpc.Server:
        """Health alone, plaintext, sharing this server's statuses: Kubernetes' native gRPC
        probes cannot speak TLS, and a health status is no secret."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{self.service}-health"),
            options=[("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=16,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def start(self) -> int:
        tls = server_tls(self.config)
        if tls is None:
            self.port = self.server.add_insecure_port(self.config.bind_address)
        else:
            self.port = self.server.add_secure_port(self.config.bind_address, tls.credentials())
        if not self.port:
            raise RuntimeError(f"cannot bind gRPC port {self.config.bind_address}")
        self.server.start()
        if self._health_server is not None:
            self.health_port = self._health_server.add_insecure_port(f"{self.config.host}:{self.config.health_port}")
            if not self.health_port:
                raise RuntimeError(f"cannot bind the health port {self.config.host}:{self.config.health_port}")
            self._health_server.start()
        transport = "plaintext" if tls is None else ("mutual TLS" if tls.mutual else "TLS")
        log.info(
            "gRPC server listening",
            extra={
                "host": self.config.host,
                "port": self.port,
                "transport": transport,
                "health_port": self.health_port,
                "auth": "tokens" if self._auth else "off",
                "services": [b.full_name for b in self.bindings],
            },
        )
        if tls is None and not self._auth and self.config.host not in _LOOPBACK_HOSTS:
            log.warning(
                "listening beyond loopback with neither TLS nor tokens: anyone who can reach this port may call "
                "every RPC (docs/SECURITY.md)",
                extra={"host": self.config.host},
            )
        return self.port

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *[b.full_name for b in self.bindings]]:
            self.health.set(name, status)

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, wait the drain delay, then stop taking calls and let
        in-flight ones finish for up to the grace period."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.set_serving(False)
        if self.config.drain_delay_s:
            time.sleep(self.config.drain_delay_s)
        grace = self.config.grace_period_s if grace_s is None else grace_s
        log.info("stopping gRPC server", extra={"grace_period_s": grace})
        self.server.stop(grace).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()

    def wait_for_signal(self) -> int:
        """Block until SIGTERM or SIGINT; returns the signal number."""
        return wait_for_signal()


def wait_for_signal() -> int:
    """Block until SIGTERM or SIGINT; returns the signal number."""
    received: list[int] = []
    done = threading.Event()

    def on_signal(signum, _frame):
        received.append(signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not done.wait(0.5):
        pass
    log.info("signal received; shutting down", extra={"signal": signal.Signals(received[0]).name})
    return received[0]
