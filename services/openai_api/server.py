"""The front door's HTTP server and lifecycle (``python -m services.openai_api``).

Python's ThreadingHTTPServer speaking HTTP/1.1, a thread per connection
(handler.py serves each): keep-alive connections, idle ones closed after
--idle-timeout-s. ``GET /health`` (no token) says 200 SERVING or 503
NOT_SERVING.

It runs through shared.service_main.run_service, as the gRPC services do
(config, logging, /metrics, start, wait for the signal, stop). On SIGTERM
/health turns 503, the drain delay passes, the listening socket closes,
in-flight requests (streams included) get up to the grace period to finish,
then the remaining connections are closed and the gRPC channels with them.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Sequence
from http.server import ThreadingHTTPServer

from services.openai_api.config import OpenAIApiConfig
from services.openai_api.handler import FrontDoorHandler
from services.openai_api.routes import OpenAIRoutes, Upstream
from shared.grpc.tls import ClientTLS
from shared.service_main import run_service

log = logging.getLogger(__name__)

SERVICE_NAME = "openai_api"


class FrontDoorHTTPServer(ThreadingHTTPServer):
    """A thread per connection; counts requests in flight and tracks open connections for a graceful stop."""

    daemon_threads = True
    block_on_close = False  # stop() waits for requests, not for idle keep-alive connections

    def __init__(self, config: OpenAIApiConfig, routes: OpenAIRoutes):
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        super().__init__((config.host, config.port), FrontDoorHandler, bind_and_activate=False)
        self.config = config
        self.routes = routes
        self.serving = False
        self.expected_auth = f"Bearer {config.auth_token}".encode() if config.auth_token else None
        self.slots = threading.BoundedSemaphore(config.max_workers)
        self._idle = threading.Condition()
        self._in_flight = 0
        self._connections: set[socket.socket] = set()

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can take seconds; nothing here uses it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._idle:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def begin_request(self) -> None:
        with self._idle:
            self._in_flight += 1

    def end_request(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if ``timeout_s`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout_s)

    def close_connections(self) -> None:
        """Shut every open connection: idle keep-alive ones, and past the grace period busy ones too."""
        with self._idle:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client


class OpenAIApiServer:
    """The HTTP server around OpenAIRoutes, over the gRPC services (or any Upstream)."""

    def __init__(self, config: OpenAIApiConfig, upstream: Upstream | None = None):
        if upstream is None:
            from services.openai_api.upstream import GrpcUpstream

            tls = ClientTLS(config.tls_ca, config.tls_client_cert, config.tls_client_key, config.tls_server_name)
            upstream = GrpcUpstream(
                config.policy_addr, config.feedback_addr, config.upstream_timeout_s, tls if config.tls_ca else None
            )
        self.config = config
        self.upstream = upstream
        self.httpd = FrontDoorHTTPServer(config, OpenAIRoutes(upstream, config.model_id))
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> int:
        """Bind, serve in a background thread, report SERVING; returns the bound port."""
        self.httpd.server_bind()
        self.httpd.server_activate()
        self.port = self.httpd.server_port
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.25,), name="openai-api-http")
        self._thread.start()
        self.httpd.serving = True
        log.info("HTTP server listening", extra={"port": self.port, "model_id": self.config.model_id})
        return self.port

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, the drain delay, stop accepting, let in-flight requests finish, close the rest."""
        if self._stopped:
            return
        self._stopped = True
        self.httpd.serving = False
        if self.config.drain_delay_s and self._thread is not None:
            time.sleep(self.config.drain_delay_s)
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()
        grace = self.config.grace_period_s if grace_s is None else grace_s
        log.info("stopping HTTP server", extra={"grace_period_s": grace})
        if not self.httpd.wait_idle(grace):
            log.warning("requests still in flight after the grace period; closing their connections")
        self.httpd.close_connections()
        close = getattr(self.upstream, "close", None)
        if close is not None:
            close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run until signalled; the exit code is 2 for a bad config, 1 for a failed start."""
    return run_service(OpenAIApiConfig, SERVICE_NAME, OpenAIApiServer, argv)
