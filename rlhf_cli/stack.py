"""Run the whole stack on one machine: the embedded broker and each service as
a child process, started in order and checked through gRPC health.

Used by `rlhf up`, `rlhf demo` and the end-to-end tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import env
from shared.broker import EmbeddedBroker
from shared.kafka_io import ensure_topics

# name -> (gRPC port, metrics port): the services' own defaults.
SERVICE_PORTS = {
    "reward": (50052, 9102),
    "policy": (50051, 9101),
    "feedback": (50053, 9103),
    "trainer": (50054, 9104),
}
# Start order: the trainer scores through the reward service.
SERVICE_ORDER = ["reward", "policy", "feedback", "trainer"]


def available_services() -> list[str]:
    """Services whose package exists in this checkout, in start order."""
    root = Path(__file__).resolve().parent.parent / "services"
    return [name for name in SERVICE_ORDER if (root / name / "__main__.py").is_file()]


def health_status(address: str, timeout_s: float = 1.0) -> str:
    """SERVING / NOT_SERVING / UNREACHABLE for the server at ``address``."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"


@dataclass
class ServiceProcess:
    name: str
    port: int
    metrics_port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    # How it was last started, so restart() can start it the same way.
    launch: tuple[dict[str, str], list[str]] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, base_env: dict[str, str], extra_args: list[str]) -> None:
        self.launch = (dict(base_env), list(extra_args))
        child_env = dict(base_env)
        child_env[env.PORT] = str(self.port)
        child_env[env.METRICS_PORT] = str(self.metrics_port)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}", *extra_args],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self, note: str = "restarted") -> None:
        """Start the service again as it was last started (it must have exited);
        ``note`` marks the place in its log."""
        if self.launch is None or self.running():
            raise RuntimeError(f"{self.name}: restart() needs a service that was started and has exited")
        with open(self.log_path, "ab") as log:
            log.write(f"----- {note} -----\n".encode())
        self.start(*self.launch)

    def stop(self, timeout_s: float) -> int | None:
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@dataclass
class Stack:
    """Broker + services. ``kafka`` empty = start the embedded broker."""

    model_store: Path
    log_dir: Path
    services: list[str]
    kafka: str = ""
    broker_port: int = 9092
    port_offset: int = 0
    service_args: dict[str, list[str]] = field(default_factory=dict)
    broker: EmbeddedBroker | None = None
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.kafka or (self.broker.bootstrap if self.broker else "")

    def address(self, name: str) -> str:
        return self.processes[name].address

    def start_broker(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.kafka:
            self.broker = EmbeddedBroker(port=self.broker_port, log_path=self.log_dir / "broker.log").start()
        ensure_topics(self.bootstrap)

    def start_services(self, ready_timeout_s: float = 180.0, on_progress=None) -> None:
        base_env = {
            **os.environ,
            env.KAFKA: self.bootstrap,
            env.MODEL_STORE: str(self.model_store),
            env.LOG_FORMAT: "text",
            "PYTHONUNBUFFERED": "1",
        }
        for name, (port, _metrics_port) in SERVICE_PORTS.items():
            base_env[getattr(env, f"{name.upper()}_ADDR")] = f"127.0.0.1:{port + self.port_offset}"
        # The trainer's ledger and checkpoints live beside the logs of this run.
        base_env.setdefault(env.TRAINER_STATE_DIR, str(self.log_dir.parent / "trainer-state"))
        # Every service shares this machine's cores: a second torch thread in
        # the trainer measured 5-30x slower under that contention (BENCHMARKS.md).
        base_env.setdefault(env.TRAINER_TORCH_THREADS, "1")
        for name in self.services:
            port, mport = SERVICE_PORTS[name]
            proc = ServiceProcess(name, port + self.port_offset, mport + self.port_offset, self.log_dir / f"{name}.log")
            proc.start(base_env, self.service_args.get(name, []))
            self.processes[name] = proc
            self._wait_ready(proc, ready_timeout_s, on_progress)

    def _wait_ready(self, proc: ServiceProcess, timeout_s: float, on_progress) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.running():
                tail = proc.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{proc.name} exited with code {proc.proc.returncode}; its log ends:\n{tail}")
            status = health_status(proc.address)
            if on_progress:
                on_progress(proc.name, status)
            if status == "SERVING":
                return
            time.sleep(0.3)
        raise RuntimeError(f"{proc.name} not SERVING after {timeout_s} s; see {proc.log_path}")

    def check_alive(self) -> list[str]:
        """Names of services that have exited."""
        return [name for name, p in self.processes.items() if not p.running()]

    def stop(self, timeout_s: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every service (reverse order), then stop the broker."""
        codes = {}
        for name in reversed(list(self.processes)):
            codes[name] = self.processes[name].stop(timeout_s)
        if self.broker:
            self.broker.stop()
        return codes
