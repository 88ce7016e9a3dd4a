"""The life of a gRPC server, whichever kind: built, started, drained, stopped.

Both servers (shared.grpc.server.GrpcServer on a thread pool,
shared.grpc.aio_server.AioGrpcServer on an event loop) are a ServerLifecycle:
the same options and message-size bounds, the same health servicer (NOT_SERVING
until the service says it is ready, and again from SIGTERM on) and optional
plaintext health port, reflection, TLS, bind errors, "listening" log line, and
the same shutdown (NOT_SERVING, drain delay, grace period). A subclass only
makes its grpc server and says how to start one, stop one and set a health
status, since grpc.aio does those with coroutines on its own loop.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.grpc.auth import TokenRegistry
from shared.grpc.tls import ServerTLS, server_tls
from shared.service_config import ServiceConfig

log = logging.getLogger(__name__)

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# grpc's own transport limit sits above ours so an oversized request reaches
# the interceptor and gets INVALID_ARGUMENT with the limit, not a bare
# RESOURCE_EXHAUSTED; beyond this the transport refuses it outright.
TRANSPORT_LIMIT_FACTOR = 4
# The plaintext health port answers probes only: a couple of handlers, a small bound.
HEALTH_PORT_OPTIONS: list[tuple[str, Any]] = [("grpc.so_reuseport", 0)]
HEALTH_PORT_MAX_RPCS = 16


@dataclass(frozen=True)
class ServiceBinding:
    """One proto service: its generated add_*_to_server, the servicer, its full name."""

    add_to_server: Callable[[Any, Any], None]
    servicer: Any
    full_name: str


def server_options(config: ServiceConfig) -> list[tuple[str, Any]]:
    """Channel options of a service's main port: message-size bounds, no port sharing
    (a second process on the port is an error, not a silent split), connection age."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", config.max_message_bytes * TRANSPORT_LIMIT_FACTOR),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if config.max_connection_age_s > 0:
        # GOAWAY after the age; calls in flight then have the grace period to finish.
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max(config.grace_period_s, 1.0) * 1000)),
        ]
    return options


def max_concurrent_rpcs(config: ServiceConfig) -> int:
    """Calls admitted at once (beyond: RESOURCE_EXHAUSTED); max_workers bounds both kinds of server alike."""
    return config.max_workers * 4


def bind(server: Any, address: str, what: str, tls: ServerTLS | None) -> int:
    """Add ``address`` to ``server`` (TLS when given); returns the port. grpc says only
    "Failed to bind" (or returns 0 in older releases): the error names the port and why it may fail."""
    try:
        port = server.add_insecure_port(address) if tls is None else server.add_secure_port(address, tls.credentials())
    except RuntimeError as exc:
        raise RuntimeError(f"cannot bind the {what} {address}: in use, or not an address of this host") from exc
    if not port:
        raise RuntimeError(f"cannot bind the {what} {address}: in use, or not an address of this host")
    return int(port)


class ServerLifecycle(ABC):
    """Start-up and shutdown shared by both kinds of gRPC server.

    A subclass sets ``server`` (the grpc server), ``health`` (its health servicer) and
    ``health_server`` (the plaintext health-only server, or None without --health-port),
    calls ``install()`` once they exist, and implements the three hooks below.
    """

    kind = "sync"  # named in the "listening" log line

    server: Any
    health: Any
    health_server: Any | None

    def __init__(self, config: ServiceConfig, service: str, bindings: Iterable[ServiceBinding]):
        self.config = config
        self.service = service
        self.bindings = list(bindings)
        self.tokens = TokenRegistry.from_config(config)
        self.port: int | None = None
        self.health_port: int | None = None
        self._stopped = threading.Event()

    # --- what each kind of server does its own way -------------------------------------

    @abstractmethod
    def _start_server(self, server: Any) -> None:
        """Start ``server`` (already bound)."""

    @abstractmethod
    def _begin_stop(self, server: Any, grace_s: float) -> Callable[[], None]:
        """Make ``server`` refuse new calls now; the returned wait blocks until in-flight
        ones ended or ``grace_s`` passed."""

    @abstractmethod
    def _set_health(self, status: int) -> None:
        """Set ``status`` for every name in ``health_names``."""

    def _close(self) -> None:  # noqa: B027 - optional: the thread-pool server has nothing more to release
        """Release what the servers ran on, after both stopped."""

    # --- shared ------------------------------------------------------------------------

    @property
    def health_names(self) -> list[str]:
        """The empty name (the whole server: what Kubernetes probes ask) and each proto service."""
        return ["", *[b.full_name for b in self.bindings]]

    def install(self) -> None:
        """Add the servicers, health and reflection to ``server``, and health to the health port's server."""
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [b.full_name for b in self.bindings]
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection([*names, health_name, reflection.SERVICE_NAME], self.server)
        if self.health_server is not None:
            # Health alone, plaintext, sharing this server's statuses: Kubernetes' native gRPC
            # probes cannot speak TLS, and a health status is no secret.
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)

    def start(self) -> int:
        """Bind (TLS when configured), start, bind and start the health port, log; returns the port."""
        tls = server_tls(self.config)
        self.port = bind(self.server, self.config.bind_address, "gRPC port", tls)
        self._start_server(self.server)
        if self.health_server is not None:
            address = f"{self.config.host}:{self.config.health_port}"
            self.health_port = bind(self.health_server, address, "health port", None)
            self._start_server(self.health_server)
        self._log_listening(tls)
        return self.port

    def _log_listening(self, tls: ServerTLS | None) -> None:
        transport = "plaintext" if tls is None else ("mutual TLS" if tls.mutual else "TLS")
        log.info(
            "gRPC server listening",
            extra={
                "host": self.config.host,
                "port": self.port,
                "transport": transport,
                "health_port": self.health_port,
                "auth": "tokens" if self.tokens else "off",
                "server": self.kind,
                "services": [b.full_name for b in self.bindings],
            },
        )
        if tls is None and not self.tokens and self.config.host not in _LOOPBACK_HOSTS:
            log.warning(
                "listening beyond loopback with neither TLS nor tokens: anyone who can reach this port may call "
                "every RPC (docs/SECURITY.md)",
                extra={"host": self.config.host},
            )

    def set_serving(self, serving: bool) -> None:
        self._set_health(
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, wait the drain delay, then stop taking calls and let
        in-flight ones finish for up to the grace period. Only the first call acts."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_period_s if grace_s is None else grace_s
        if self.config.drain_delay_s:
            # Load balancers see NOT_SERVING and stop routing here while calls are still taken.
            self.set_serving(False)
            time.sleep(self.config.drain_delay_s)
        log.info("stopping gRPC server", extra={"grace_period_s": grace})
        in_flight_done = self._begin_stop(self.server, grace)
        # With no drain delay, NOT_SERVING comes once new calls are refused, so whoever reads
        # NOT_SERVING (a probe, a test) knows the next call will be refused, not served.
        self.set_serving(False)
        in_flight_done()
        if self.health_server is not None:
            self._begin_stop(self.health_server, 0)()
        self._close()


def wants_health_port(config: ServiceConfig) -> bool:
    """--health-port -1 turns the separate plaintext health port off."""
    return config.health_port >= 0
