"""The grpc.aio server, for servicers whose methods are coroutines (the feedback gateway's --server aio).

Start-up and shutdown are shared.grpc.lifecycle's, as for the thread-pool
GrpcServer; each call gets what the sync interceptors give it, decided by the
same shared.grpc.calls, in the same order: Prometheus metrics per method and
code, a request id, bearer-token auth with roles (health and reflection stay
open), and shared.errors mapped to status codes. One interceptor does all four
and wraps each method's handler once, where the sync stack builds four
wrappers per call: with no handler thread to hand each call to either, a call
costs less CPU, which is why an awaiting gateway runs here. Unary-unary methods
only: a streaming method that is not public is refused with UNIMPLEMENTED.

The event loop runs in a thread of its own, so start(), set_serving() and
stop() are called synchronously, as on GrpcServer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from shared.grpc import calls
from shared.grpc.auth import TokenRegistry, principal_var
from shared.grpc.calls import REQUEST_ID_HEADER
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


class AioCallInterceptor(grpc.aio.ServerInterceptor):
    """Metrics, request id, auth and error mapping for every unary call, wrapped once per method."""

    def __init__(self, service: str, tokens: TokenRegistry | None, max_message_bytes: int):
        self.service = service
        self.tokens = tokens
        self.max_message_bytes = max_message_bytes
        self.metrics = calls.RpcMetrics(service)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

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
        public = calls.is_public(method)
        if not handler.unary_unary:
            if public:
                return handler
            detail = f"{method} streams; this server wraps unary methods only"
            return grpc.unary_stream_rpc_method_handler(_refusing(grpc.StatusCode.UNIMPLEMENTED, detail))
        behavior = handler.unary_unary
        name = calls.method_name(method)
        tokens = None if public else self.tokens
        in_flight = self.metrics.in_flight
        self.metrics.latency(name)  # looked up once here, not on the first call

        async def call(request, context):
            start = time.perf_counter()
            in_flight.inc()
            code = grpc.StatusCode.OK
            metadata = dict(context.invocation_metadata() or ())
            request_id_token = request_id_var.set(calls.request_id_from(metadata))
            principal_token = None
            try:
                await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id_var.get()),))
                if tokens is not None:
                    decision = calls.authorize(tokens, method, metadata.get("authorization", ""))
                    if decision.principal is None:
                        code = decision.code
                        await context.abort(decision.code, decision.detail)
                    principal_token = principal_var.set(decision.principal)
                return await self._run(behavior, request, context)
            except grpc.aio.AbortError:
                code = calls.call_code(context, code if code != grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN)
                raise
            finally:
                if principal_token is not None:
                    principal_var.reset(principal_token)
                request_id_var.reset(request_id_token)
                in_flight.dec()
                self.metrics.record(name, code, time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(call, handler.request_deserializer, handler.response_serializer)

    async def _run(self, behavior, request, context) -> Any:
        """The response, or abort with the status code the error maps to."""
        try:
            calls.check_message_size(request, self.max_message_bytes)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            status = calls.status_for(exc)
            if status.trailing_metadata:
                context.set_trailing_metadata(status.trailing_metadata)
            await context.abort(status.code, status.detail)
            raise  # abort raised already; this only tells the type checker the call ends here


def _refusing(code: grpc.StatusCode, detail: str):
    async def refuse(request, context):
        await context.abort(code, detail)

    return refuse


class AioGrpcServer(ServerLifecycle):
    """A grpc.aio.Server with health, reflection and AioCallInterceptor, on a loop thread."""

    kind = "aio"

    def __init__(self, config: ServiceConfig, service: str, bindings: Iterable[ServiceBinding]):
        super().__init__(config, service, bindings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"{service}-aio", daemon=True)
        self._thread.start()
        self._run(self._build())

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _build(self) -> None:
        # grpc.aio servers and the aio health servicer belong to the loop they are made on.
        config = self.config
        interceptor = AioCallInterceptor(self.service, self.tokens or None, config.max_message_bytes)
        self.server = grpc.aio.server(
            interceptors=[interceptor],
            options=server_options(config),
            maximum_concurrent_rpcs=max_concurrent_rpcs(config),
        )
        self.health = health.aio.HealthServicer()
        self.health_server = None
        if wants_health_port(config):
            self.health_server = grpc.aio.server(
                options=HEALTH_PORT_OPTIONS, maximum_concurrent_rpcs=HEALTH_PORT_MAX_RPCS
            )
        self.install()
        await self._set_health_async(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _start_server(self, server: grpc.aio.Server) -> None:
        self._run(server.start())

    def _begin_stop(self, server: grpc.aio.Server, grace_s: float) -> Callable[[], None]:
        # Scheduled on the loop ahead of the NOT_SERVING update that the lifecycle submits next.
        stopping = asyncio.run_coroutine_threadsafe(server.stop(grace_s), self.loop)
        return lambda: stopping.result()

    def _set_health(self, status: int) -> None:
        self._run(self._set_health_async(status))

    async def _set_health_async(self, status: int) -> None:
        for name in self.health_names:
            await self.health.set(name, status)

    def _close(self) -> None:
        """End the loop once both servers stopped."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
