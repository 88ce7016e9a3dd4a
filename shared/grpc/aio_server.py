"""The grpc.aio twin of shared.grpc.server.GrpcServer, for servicers whose methods are coroutines.

Each call gets what the sync interceptors give it, in the same order: Prometheus
metrics per method and code, a request id (taken from x-request-id or made,
sent back in the initial metadata, carried by logs), bearer-token auth with
roles (health and reflection stay open), and shared.errors mapped to status
codes (a request over --max-message-bytes: INVALID_ARGUMENT; anything else
unexpected: INTERNAL with the request id). One interceptor does all four and
wraps each method's handler once, where the sync stack builds four wrappers
per call: with no handler thread to hand each call to either, a call costs
less CPU. Unary-unary methods only: a streaming method that is not public is
refused with UNIMPLEMENTED.

The event loop runs in a thread of its own, so start(), set_serving(), stop()
and wait_for_signal() are called synchronously, as on GrpcServer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared import errors, metrics
from shared.config import ServiceConfig
from shared.grpc.auth import TokenRegistry, principal_var
from shared.grpc.server import (
    _LOOPBACK_HOSTS,
    _PUBLIC_PREFIXES,
    _STATUS_BY_ERROR,
    _TRANSPORT_LIMIT_FACTOR,
    REQUEST_ID_HEADER,
    RETRY_AFTER_HEADER,
    ServiceBinding,
    wait_for_signal,
)
from shared.grpc.tls import server_tls
from shared.kafka.events import new_id
from shared.logs import request_id_var

log = logging.getLogger(__name__)


class AioCallInterceptor(grpc.aio.ServerInterceptor):
    """Metrics, request id, auth and error mapping for every unary call, wrapped once per method."""

    def __init__(self, service: str, tokens: TokenRegistry | None, max_message_bytes: int):
        self.service = service
        self.tokens = tokens
        self.max_message_bytes = max_message_bytes
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._in_flight = metrics.RPC_IN_FLIGHT.labels(service)
        self._counters: dict[tuple[str, grpc.StatusCode], Any] = {}  # label lookups cost more than the increment

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrap(method, handler)
            self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        public = method.startswith(_PUBLIC_PREFIXES)
        if not handler.unary_unary:
            if public:
                return handler
            detail = f"{method} streams; this server wraps unary methods only"
            return grpc.unary_stream_rpc_method_handler(_refusing(grpc.StatusCode.UNIMPLEMENTED, detail))
        behavior = handler.unary_unary
        name = method.rsplit("/", 1)[-1]
        latency = metrics.RPC_LATENCY.labels(self.service, name)
        check_auth = self.tokens is not None and not public

        async def call(request, context):
            start = time.perf_counter()
            self._in_flight.inc()
            code = grpc.StatusCode.OK
            metadata = dict(context.invocation_metadata() or ())
            incoming = metadata.get(REQUEST_ID_HEADER, "")
            request_id_token = request_id_var.set(incoming[:128] if incoming else new_id())
            principal_token = None
            try:
                await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id_var.get()),))
                if check_auth:
                    code, detail, principal = self._authenticate(method, metadata.get("authorization", ""))
                    if principal is None:
                        await context.abort(code, detail)
                    principal_token = principal_var.set(principal)
                code, response = await self._run(behavior, request, context)
                return response
            except grpc.aio.AbortError:
                code = _code_of(context, code)
                raise
            finally:
                if principal_token is not None:
                    principal_var.reset(principal_token)
                request_id_var.reset(request_id_token)
                self._in_flight.dec()
                self._count(name, code)
                latency.observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(call, handler.request_deserializer, handler.response_serializer)

    def _authenticate(self, method: str, given: str):
        """(code, detail, principal): the principal when it may call ``method``, else None with why."""
        assert self.tokens is not None
        principal = self.tokens.authenticate(given)
        if principal is None:
            detail = "missing bearer token: send metadata 'authorization: Bearer <token>'" if not given else ""
            return grpc.StatusCode.UNAUTHENTICATED, detail or "invalid bearer token", None
        if not principal.may_call(method):
            name = method.rsplit(".", 1)[-1]
            detail = f"{name} needs an operator token; this token has the {principal.role.value} role"
            return grpc.StatusCode.PERMISSION_DENIED, detail, None
        return grpc.StatusCode.OK, "", principal

    async def _run(self, behavior, request, context) -> tuple[grpc.StatusCode, Any]:
        """(OK, the response), or abort with the status code the error maps to."""
        try:
            size = request.ByteSize() if hasattr(request, "ByteSize") else 0
            if size > self.max_message_bytes:
                raise errors.InvalidArgument(
                    "request",
                    f"message is {size} bytes; the limit is {self.max_message_bytes} bytes "
                    "(server flag --max-message-bytes)",
                )
            return grpc.StatusCode.OK, await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except errors.ServiceError as exc:
            for cls, code in _STATUS_BY_ERROR:
                if isinstance(exc, cls):
                    if isinstance(exc, errors.ResourceExhausted):
                        context.set_trailing_metadata(((RETRY_AFTER_HEADER, f"{exc.retry_after_s:.3f}"),))
                    await context.abort(code, exc.message)
            raise
        except Exception:  # noqa: BLE001
            log.exception("unhandled error in RPC")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id_var.get()})")
            raise

    def _count(self, name: str, code: grpc.StatusCode) -> None:
        counter = self._counters.get((name, code))
        if counter is None:
            counter = self._counters[(name, code)] = metrics.RPC_REQUESTS.labels(self.service, name, code.name)
        counter.inc()


def _code_of(context, fallback: grpc.StatusCode) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code
    return fallback if fallback != grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN


def _refusing(code: grpc.StatusCode, detail: str):
    async def refuse(request, context):
        await context.abort(code, detail)

    return refuse


class AioGrpcServer:
    """A configured grpc.aio.Server with health, reflection and AioCallInterceptor, on a loop thread."""

    def __init__(self, config: ServiceConfig, service: str, bindings: Iterable[ServiceBinding]):
        self.config = config
        self.service = service
        self.bindings = list(bindings)
        self.port: int | None = None
        self.health_port: int | None = None
        self._tokens = TokenRegistry.from_config(config)
        self._stopped = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"{service}-aio", daemon=True)
        self._thread.start()
        self._run(self._build())

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _build(self) -> None:
        # grpc.aio servers belong to the loop they are made on.
        config = self.config
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", config.max_message_bytes * _TRANSPORT_LIMIT_FACTOR),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if config.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(max(config.grace_period_s, 1.0) * 1000)),
            ]
        interceptor = AioCallInterceptor(self.service, self._tokens or None, config.max_message_bytes)
        # max_workers bounds concurrent calls here as it does on the thread-pool server.
        self.server = grpc.aio.server(
            interceptors=[interceptor], options=options, maximum_concurrent_rpcs=config.max_workers * 4
        )
        self.health = health.aio.HealthServicer()
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [b.full_name for b in self.bindings]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], self.server
        )
        self._health_server = None
        if config.health_port >= 0:
            # Plaintext, health alone, the same statuses: see GrpcServer._plaintext_health_server.
            self._health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=16)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        await self._set_serving(False)

    def start(self) -> int:
        return self._run(self._start())

    async def _start(self) -> int:
        tls = server_tls(self.config)
        if tls is None:
            self.port = self.server.add_insecure_port(self.config.bind_address)
        else:
            self.port = self.server.add_secure_port(self.config.bind_address, tls.credentials())
        if not self.port:
            raise RuntimeError(f"cannot bind gRPC port {self.config.bind_address}")
        await self.server.start()
        if self._health_server is not None:
            self.health_port = self._health_server.add_insecure_port(f"{self.config.host}:{self.config.health_port}")
            if not self.health_port:
                raise RuntimeError(f"cannot bind the health port {self.config.host}:{self.config.health_port}")
            await self._health_server.start()
        transport = "plaintext" if tls is None else ("mutual TLS" if tls.mutual else "TLS")
        log.info(
            "gRPC server listening",
            extra={
                "host": self.config.host,
                "port": self.port,
                "transport": transport,
                "health_port": self.health_port,
                "auth": "tokens" if self._tokens else "off",
                "server": "aio",
                "services": [b.full_name for b in self.bindings],
            },
        )
        if tls is None and not self._tokens and self.config.host not in _LOOPBACK_HOSTS:
            log.warning(
                "listening beyond loopback with neither TLS nor tokens: anyone who can reach this port may call "
                "every RPC (docs/SECURITY.md)",
                extra={"host": self.config.host},
            )
        return self.port

    def set_serving(self, serving: bool) -> None:
        self._run(self._set_serving(serving))

    async def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *[b.full_name for b in self.bindings]]:
            await self.health.set(name, status)

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, wait the drain delay, then stop taking calls and let
        in-flight ones finish for up to the grace period; then end the loop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.set_serving(False)
        if self.config.drain_delay_s:
            time.sleep(self.config.drain_delay_s)
        grace = self.config.grace_period_s if grace_s is None else grace_s
        log.info("stopping gRPC server", extra={"grace_period_s": grace})
        self._run(self.server.stop(grace))
        if self._health_server is not None:
            self._run(self._health_server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def wait_for_signal(self) -> int:
        """Block until SIGTERM or SIGINT; returns the signal number."""
        return wait_for_signal()
