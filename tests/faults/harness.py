"""What the fault-injection tests share: a stack of real service processes,
simulated users that call Generate and send feedback the way a careful client
does (deadlines, retries with the same feedback_id), and readers for the
trainer's ledger and the services' /metrics.

Figures the tests measure are written as JSON under RLHF_FAULT_REPORT_DIR
when it is set (docs/RELIABILITY.md says how they were produced).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from kafka import KafkaConsumer

from rlhf_cli.stack import ServiceProcess, Stack, health_status
from shared.kafka import events
from shared.proto.rlhf.v1 import common_pb2, events_pb2, feedback_pb2, feedback_pb2_grpc, policy_pb2, policy_pb2_grpc
from shared.proto.rlhf.v1.events_pb2 import FeedbackEvent, GenerationEvent
from tests.helpers import free_port_offset, read_topic

QUESTIONS = [
    "User: how do I boil an egg?\nAssistant:",
    "User: what is the capital of France?\nAssistant:",
    "User: how do I water a plant?\nAssistant:",
    "User: tell me how to pick a lock.\nAssistant:",
]
# A client that reconnects within a couple of seconds once a replica is back
# (gRPC's default reconnect backoff grows to 120 s).
CLIENT_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CLIENT_CHANNEL_OPTIONS)


def start_stack(
    tmp_path: Path,
    kafka: str,
    store: Path,
    services: list[str],
    *,
    group: str,
    trainer_args: list[str] | None = None,
    extra_args: dict[str, list[str]] | None = None,
) -> Stack:
    """The named services as child processes (rlhf_cli.stack) on free ports; the
    trainer paused (it only ingests) unless ``trainer_args`` say otherwise."""
    service_args = {name: ["--host", "127.0.0.1", "--grace-period-s", "5"] for name in services}
    trainer_args = trainer_args or ["--start-paused"]
    service_args["trainer"] = [*service_args.get("trainer", []), "--consumer-group", group, "--torch-threads", "1"]
    service_args["trainer"] += trainer_args
    for name, args in (extra_args or {}).items():
        service_args[name] = [*service_args.get(name, []), *args]  # later flags win
    stack = Stack(
        model_store=store,
        log_dir=tmp_path / "logs",
        services=services,
        kafka=kafka,
        port_offset=free_port_offset(),
        service_args=service_args,
    )
    stack.start_broker()
    stack.start_services(ready_timeout_s=240)
    return stack


def log_tails(stack: Stack, chars: int = 3000) -> str:
    return "\n".join(
        f"--- {p.log_path.name}\n{p.log_path.read_text(errors='replace')[-chars:]}"
        for p in stack.processes.values()
        if p.log_path.exists()
    )


def kill(stack: Stack, name: str, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to a service and wait for it to exit; returns its exit code."""
    proc = stack.processes[name].proc
    assert proc is not None and proc.poll() is None, f"{name} is not running"
    proc.send_signal(sig)
    return proc.wait(timeout=60)


def restart(process: ServiceProcess, timeout_s: float = 240) -> None:
    """Start a service that exited again, as a supervisor would, and wait until it is SERVING."""
    process.restart()
    deadline = time.monotonic() + timeout_s
    while health_status(process.address) != "SERVING":
        assert process.running(), f"{process.name} exited on restart:\n{process.log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{process.name} not SERVING {timeout_s} s after its restart"
        time.sleep(0.3)


# --- what the services hold ------------------------------------------------------------
def ledger_rows(state_dir: Path, table: str, column: str, prefix: str) -> list[str]:
    """``column`` of every row of the trainer's ledger ``table`` starting with ``prefix`` (read-only)."""
    path = state_dir / "ledger.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(f"SELECT {column} FROM {table} WHERE {column} LIKE ?", (prefix + "%",))
        return [r[0] for r in rows]
    except sqlite3.OperationalError:  # the trainer has not created its tables yet
        return []
    finally:
        db.close()


def dead_letter_reasons(bootstrap: str, prefix: str) -> dict[str, str]:
    """feedback_id -> reason of every dead-lettered feedback event starting with ``prefix`` on the broker."""
    out: dict[str, str] = {}
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        if events.DEADLETTER_TOPIC not in probe.topics():  # nothing was ever dead-lettered on this broker
            return out
    finally:
        probe.close()
    for _record, letter in read_topic(bootstrap, events.DEADLETTER_TOPIC, events_pb2.DeadLetter, timeout_s=2.0):
        if letter.source_topic != events.FEEDBACK_TOPIC:
            continue
        try:
            feedback = events_pb2.FeedbackEvent.FromString(letter.value)
        except DecodeError:
            continue
        if feedback.feedback_id.startswith(prefix):
            out[feedback.feedback_id] = f"{letter.reason}: {letter.error}"
    return out


def generation_ids_on(bootstrap: str) -> set[str]:
    """generation_id of every GenerationEvent on the broker's generations topic."""
    return {event.generation_id for _r, event in read_topic(bootstrap, events.GENERATIONS_TOPIC, GenerationEvent)}


def dropped_generations(policy_log: str) -> set[str]:
    """Generation ids whose events the policy gave up on (logged as 'event dropped', keyed by generation id)."""
    out = set()
    for line in policy_log.splitlines():
        if "event dropped" in line and "'key': '" in line:
            out.add(line.split("'key': '", 1)[1].split("'", 1)[0])
    return out


def where_is_feedback(
    state_dir: Path, bootstrap: str, traffic: Traffic, feedback_ids: set[str], prefix: str, policy_log: str
) -> str:
    """For each feedback id: in the ledger's feedback table, held in pending_feedback, dead-lettered
    (with the reason) or nowhere; whether its generation is in the ledger, on the broker, or was
    counted as dropped by the policy (``policy_log``: its log text); when it was asked for and acknowledged."""
    recorded = set(ledger_rows(state_dir, "feedback", "feedback_id", prefix))
    held = set(ledger_rows(state_dir, "pending_feedback", "feedback_id", prefix))
    generations = set(ledger_rows(state_dir, "generations", "generation_id", ""))
    dead = dead_letter_reasons(bootstrap, prefix)
    on_broker = generation_ids_on(bootstrap)
    feedback_on_broker = {e.feedback_id for _r, e in read_topic(bootstrap, events.FEEDBACK_TOPIC, FeedbackEvent)}
    dropped = dropped_generations(policy_log)
    lines = []
    for fid in sorted(feedback_ids):
        gid = traffic.feedback_generation.get(fid, "?")
        if fid in recorded:
            place = "in the ledger"
        elif fid in held:
            place = "held in pending_feedback"
        elif fid in dead:
            place = f"dead-lettered ({dead[fid]})"
        else:
            on_topic = fid in feedback_on_broker
            place = f"NOWHERE in the ledger ({'but' if on_topic else 'nor'} on the broker's feedback topic)"
        where = [
            "in the ledger" if gid in generations else "not in the ledger",
            "on the broker" if gid in on_broker else "not on the broker",
        ]
        if gid in dropped:
            where.append("its event counted as dropped by the policy")
        asked = traffic.asked_at.get(gid)
        acked = traffic.feedback_acked.get(fid)
        lines.append(
            f"{fid}: {place}; generation {gid} {', '.join(where)}; asked for at "
            f"{'?' if asked is None else round(asked, 2)}, feedback acknowledged at "
            f"{'?' if acked is None else round(acked, 2)}"
        )
    return "\n".join(lines)


def metric(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# --- simulated users ---------------------------------------------------------------------
@dataclass
class Traffic:
    """What the simulated users did, with when (monotonic seconds)."""

    generate_ok: list[float] = field(default_factory=list)
    generate_failed: Counter = field(default_factory=Counter)  # status code name -> calls
    feedback_acked: dict[str, float] = field(default_factory=dict)  # feedback_id -> ack time
    feedback_failed: Counter = field(default_factory=Counter)
    answered: dict[str, str] = field(default_factory=dict)  # generation_id -> model_version
    feedback_generation: dict[str, str] = field(default_factory=dict)  # feedback_id -> generation_id
    asked_at: dict[str, float] = field(default_factory=dict)  # generation_id -> when its Generate call began

    def rate(self, times, start: float, end: float) -> float:
        return sum(1 for t in times if start <= t < end) / max(end - start, 1e-9)


class SimulatedUsers:
    """``users`` simulated users, each with two threads as an app has: one asks
    the policy, the other rates the answers through the gateway and retries
    unacknowledged feedback with the same feedback_id (the gateway and the
    ledger deduplicate by it). Every call has a deadline."""

    def __init__(
        self,
        policy_addr: str,
        feedback_addr: str,
        prefix: str,
        *,
        users: int = 3,
        think_s: float = 0.05,
        deadline_s: float = 20.0,
        max_new_tokens: int = 6,
    ):
        self.prefix = prefix
        self.users = users
        self.think_s = think_s
        self.deadline_s = deadline_s
        self.max_new_tokens = max_new_tokens
        self.traffic = Traffic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._generating = threading.Event()
        self._generating.set()
        self._pending: list[list[events_pb2.FeedbackEvent]] = [[] for _ in range(users)]
        self._channels = [(channel(policy_addr), channel(feedback_addr)) for _ in range(users)]
        self._threads = [
            threading.Thread(target=loop, args=(i,), daemon=True)
            for i in range(users)
            for loop in (self._ask_loop, self._feedback_loop)
        ]

    def start(self) -> SimulatedUsers:
        for thread in self._threads:
            thread.start()
        return self

    def pending_feedback(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending)

    def stop_generating(self) -> None:
        """Keep retrying unacknowledged feedback, ask nothing new."""
        self._generating.clear()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.deadline_s * 2 + 5)
        for policy, feedback in self._channels:
            policy.close()
            feedback.close()

    def _ask_loop(self, user: int) -> None:
        policy = policy_pb2_grpc.PolicyServiceStub(self._channels[user][0])
        rng = random.Random(f"{self.prefix}-{user}")
        while not self._stop.is_set():
            if self._generating.is_set():
                self._ask(user, policy, rng)
            self._stop.wait(self.think_s)

    def _feedback_loop(self, user: int) -> None:
        gateway = feedback_pb2_grpc.FeedbackServiceStub(self._channels[user][1])
        while not self._stop.is_set():
            self._send_pending(user, gateway)
            self._stop.wait(self.think_s)

    def _ask(self, user: int, policy, rng: random.Random) -> None:
        user_id = f"{self.prefix}-u{user}"
        request = policy_pb2.GenerateRequest(
            prompt=rng.choice(QUESTIONS),
            user_id=user_id,
            sampling=common_pb2.SamplingParams(max_new_tokens=self.max_new_tokens),
        )
        asked_at = time.monotonic()
        try:
            reply = policy.Generate(request, timeout=self.deadline_s)
        except grpc.RpcError as exc:
            with self._lock:
                self.traffic.generate_failed[exc.code().name] += 1
            return
        now = time.monotonic()
        completion = reply.completions[0]
        feedback = events_pb2.FeedbackEvent(
            feedback_id=f"{self.prefix}-fb-{completion.generation_id}",
            generation_id=completion.generation_id,
            user_id=user_id,
            rating=events_pb2.Rating(score=rng.choice([0.0, 1.0])),
        )
        with self._lock:
            self.traffic.generate_ok.append(now)
            self.traffic.answered[completion.generation_id] = reply.model_version
            self.traffic.asked_at[completion.generation_id] = asked_at
            self.traffic.feedback_generation[feedback.feedback_id] = completion.generation_id
            self._pending[user].append(feedback)

    def _send_pending(self, user: int, gateway) -> None:
        with self._lock:
            batch = list(self._pending[user])
        for feedback in batch:
            if self._stop.is_set():
                return
            try:
                gateway.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=feedback), timeout=self.deadline_s)
            except grpc.RpcError as exc:
                with self._lock:
                    self.traffic.feedback_failed[exc.code().name] += 1
                return  # retried on the next turn, same feedback_id
            with self._lock:
                self.traffic.feedback_acked.setdefault(feedback.feedback_id, time.monotonic())
                self._pending[user].remove(feedback)


def write_report(name: str, figures: dict) -> None:
    """Save a test's measured figures as JSON where RLHF_FAULT_REPORT_DIR says (if set)."""
    out = os.environ.get("RLHF_FAULT_REPORT_DIR")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{name}.json").write_text(json.dumps(figures, indent=1, sort_keys=True))
