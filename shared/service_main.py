"""The entry point every service shares, gRPC or HTTP: config, logging,
metrics, start, wait for SIGTERM/SIGINT, graceful stop.

A service's ``main`` is one call: ``run_service(PolicyConfig, "policy",
PolicyService, argv)``. ``build(config)`` returns a Service: ``start()`` binds
and serves (raising if it cannot), ``stop(grace_s=None)`` drains and stops (and
is safe after a failed start). The config needs only ``log_level``,
``log_format``, ``metrics_port`` and ``metrics_bind_host``, so a config that is
not a ServiceConfig (the HTTP front door's) fits too.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from shared import metrics
from shared.config import ConfigError, load_config, log_config
from shared.logs import setup_logging

log = logging.getLogger(__name__)


class Service(Protocol):
    def start(self) -> Any: ...

    def stop(self, grace_s: float | None = None) -> None: ...


def run_service(
    config_cls: type,
    name: str,
    build: Callable[[Any], Service],
    argv: Sequence[str] | None = None,
    *,
    serve_metrics: bool = True,
) -> int:
    """Run a service until signalled; returns the process exit code (2: bad config, 1: failed start)."""
    try:
        config: Any = load_config(config_cls, argv, prog=f"python -m services.{name}")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(name, config.log_level, config.log_format)
    log_config(config, log)
    if serve_metrics:
        metrics.start_metrics_server(config.metrics_port, config.metrics_bind_host)
    server = build(config)
    try:
        server.start()
    except Exception:
        log.exception("service failed to start", extra={"service": name})
        server.stop(grace_s=0)
        return 1
    wait_for_signal()
    server.stop()
    log.info("service stopped", extra={"service": name})
    return 0


def wait_for_signal() -> int:
    """Block until SIGTERM or SIGINT; returns the signal number. Call it from the main thread
    (only it may install handlers); it wakes twice a second so the handlers get to run."""
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
