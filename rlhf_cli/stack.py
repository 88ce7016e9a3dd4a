"""Run the whole stack on one machine: the embedded broker and each service as
a child process, started in order and checked through gRPC health.

Used by `rlhf up`, `rlhf demo` and the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared import env
from shared.config import load_config
from shared.grpc.healthcheck import health_status
from shared.grpc.tls import client_tls_from_env
from shared.kafka.admin import ensure_topics
from shared.kafka.broker import EMBEDDED_GROUP_TIMING_ENV, EmbeddedBroker
from shared.service_config import ServiceConfig

# name -> (gRPC port, metrics port): the services' own defaults.
SERVICE_PORTS = {
    "reward": (50052, 9102),
    "policy": (50051, 9101),
    "feedback": (50053, 9103),
    "trainer": (50054, 9104),
    "openai_api": (8000, 9105),  # an HTTP port: the OpenAI-compatible front door
}
# Start order: the trainer scores through the reward service; the front door calls policy and feedback.
SERVICE_ORDER = ["reward", "policy", "feedback", "trainer", "openai_api"]
# Services that speak HTTP: their readiness is GET /health, not gRPC health.
HTTP_SERVICES = frozenset({"openai_api"})
# Policy replicas beyond the first (rlhf up --policy-replicas N): replica i (i >= 1)
# listens on 50060 + i and serves metrics on 9110 + i.
POLICY_REPLICA_PORTS = (50060, 9110)
MAX_POLICY_REPLICAS = 32


def policy_replica_ports(replica: int) -> tuple[int, int]:
    """(gRPC port, metrics port) of policy replica ``replica`` (0-based), before any offset."""
    if replica == 0:
        return SERVICE_PORTS["policy"]
    return POLICY_REPLICA_PORTS[0] + replica, POLICY_REPLICA_PORTS[1] + replica


def available_services() -> list[str]:
    """Services whose package exists in this checkout, in start order."""
    root = Path(__file__).resolve().parent.parent / "services"
    return [name for name in SERVICE_ORDER if (root / name / "__main__.py").is_file()]


def http_health_status(address: str, timeout_s: float = 1.0) -> str:
    """SERVING / NOT_SERVING / UNREACHABLE from ``GET http://<address>/health``."""
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local address: never via a proxy
    try:
        with no_proxy.open(f"http://{address}/health", timeout=timeout_s) as reply:
            return str(json.load(reply).get("status", "NOT_SERVING"))
    except urllib.error.HTTPError:
        return "NOT_SERVING"
    except (OSError, ValueError):
        return "UNREACHABLE"


def describe_process(proc: ServiceProcess) -> str:
    """One line for `rlhf up` / `rlhf demo`: where a started service listens, its metrics and log."""
    module = proc.module or proc.name
    where = f"http://{proc.address}/v1" if module in HTTP_SERVICES else f"grpc {proc.address}"
    return f"{proc.name:<10} {where}  metrics http://127.0.0.1:{proc.metrics_port}/metrics  log {proc.log_path}"


def service_status(proc: ServiceProcess, timeout_s: float = 1.0) -> str:
    """SERVING / NOT_SERVING / UNREACHABLE of a started service: HTTP /health for the front
    door, gRPC health (over TLS when RLHF_TLS_* says so, as the services inherit it) for the rest."""
    if (proc.module or proc.name) in HTTP_SERVICES:
        return http_health_status(proc.address, timeout_s)
    return health_status(proc.address, timeout_s, tls=client_tls_from_env(os.environ))


@dataclass
class ServiceProcess:
    name: str
    port: int
    metrics_port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    module: str = ""  # services.<module>; default: the name (replicas share one module)
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
        child_env[env.REPLICA_ID] = self.name
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.module or self.name}", *extra_args],
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
    policy_replicas: int = 1
    broker: EmbeddedBroker | None = None
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.kafka or (self.broker.bootstrap if self.broker else "")

    @property
    def trainer_state_dir(self) -> Path:
        """The trainer's ledger and checkpoints: RLHF_TRAINER_STATE_DIR, else beside this run's logs."""
        return Path(os.environ.get(env.TRAINER_STATE_DIR) or self.log_dir.parent / "trainer-state")

    def address(self, name: str) -> str:
        """The service's address; for the policy, every replica's (host1:port1,host2:port2):
        shared.grpc.channels balances over them."""
        if name == "policy":
            return ",".join(p.address for p in self.policy_processes())
        return self.processes[name].address

    def policy_processes(self) -> list[ServiceProcess]:
        return [p for p in self.processes.values() if (p.module or p.name) == "policy"]

    def _processes_of(self, name: str) -> list[ServiceProcess]:
        """The processes one service runs as: N policy replicas, one of anything else."""
        replicas = self.policy_replicas if name == "policy" else 1
        if not 1 <= replicas <= MAX_POLICY_REPLICAS:
            raise ValueError(f"--policy-replicas must be in 1..{MAX_POLICY_REPLICAS}, got {replicas}")
        out = []
        for i in range(replicas):
            port, mport = policy_replica_ports(i) if name == "policy" else SERVICE_PORTS[name]
            label = name if i == 0 else f"{name}-{i + 1}"
            out.append(
                ServiceProcess(
                    label, port + self.port_offset, mport + self.port_offset, self.log_dir / f"{label}.log", module=name
                )
            )
        return out

    def start_broker(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.kafka:
            self.broker = EmbeddedBroker(port=self.broker_port, log_path=self.log_dir / "broker.log").start()
        # The services' own Kafka security settings (RLHF_KAFKA_* in the environment) apply here too.
        ensure_topics(self.bootstrap, **load_config(ServiceConfig, []).kafka_client_options())

    def start_services(self, ready_timeout_s: float = 180.0, on_progress=None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        base_env = {
            **os.environ,
            env.KAFKA: self.bootstrap,
            env.MODEL_STORE: str(self.model_store),
            env.LOG_FORMAT: "text",
            "PYTHONUNBUFFERED": "1",
        }
        for name, (port, _metrics_port) in SERVICE_PORTS.items():
            base_env[getattr(env, f"{name.upper()}_ADDR")] = f"127.0.0.1:{port + self.port_offset}"
        if self.broker is not None:
            # Group timing the embedded broker forms groups quickly with (a real --kafka keeps Kafka's defaults).
            for name, value in EMBEDDED_GROUP_TIMING_ENV.items():
                base_env.setdefault(name, value)
        base_env[env.POLICY_ADDR] = ",".join(p.address for p in self._processes_of("policy"))
        base_env[env.TRAINER_STATE_DIR] = str(self.trainer_state_dir)
        # Every service shares this machine's cores: a second torch thread in
        # the trainer measured 5-30x slower under that contention (BENCHMARKS.md).
        base_env.setdefault(env.TRAINER_TORCH_THREADS, "1")
        for name in self.services:
            procs = self._processes_of(name)
            for proc in procs:  # replicas load their models side by side
                proc.start(base_env, self.service_args.get(name, []))
                self.processes[proc.name] = proc
            for proc in procs:
                self._wait_ready(proc, ready_timeout_s, on_progress)

    def _wait_ready(self, proc: ServiceProcess, timeout_s: float, on_progress) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.running():
                tail = proc.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{proc.name} exited with code {proc.proc.returncode}; its log ends:\n{tail}")
            status = service_status(proc)
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
