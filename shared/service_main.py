"""The entry point every service shares: config, logging, metrics, start,
wait for SIGTERM/SIGINT, graceful stop.

A service's ``main`` is one call: ``run_service(PolicyConfig, "policy",
PolicyService, argv)``; ``build(config)`` returns an object with ``start()``,
``stop(grace_s=None)`` and ``grpc`` (its shared.grpc.server.GrpcServer).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from shared import metrics
from shared.config import ConfigError, load_config, log_config
from shared.logs import setup_logging

log = logging.getLogger(__name__)


def run_service(
    config_cls: type,
    name: str,
    build: Callable[[Any], Any],
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
    server.grpc.wait_for_signal()
    server.stop()
    log.info("service stopped", extra={"service": name})
    return 0
