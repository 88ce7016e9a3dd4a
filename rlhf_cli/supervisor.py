"""Restart crashed services of a Stack with exponential backoff, the way
compose's `restart: always` or a Kubernetes pod's restartPolicy does.

On one machine `rlhf up` is the deployment: a policy replica killed by the
OOM killer or a crash must come back by itself, not take the stack down. A
service that exits is started again after a backoff that doubles with each
quick crash (``initial_backoff_s``, 2x, ... up to ``max_backoff_s``); one that
ran for ``stable_after_s`` before it exited starts over at the first step,
like Kubernetes' CrashLoopBackOff reset.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rlhf_cli.stack import ServiceProcess, Stack, service_status


@dataclass(frozen=True)
class RestartPolicy:
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    stable_after_s: float = 60.0

    def backoff_s(self, quick_crashes: int) -> float:
        """Wait before restart number ``quick_crashes`` of a run of quick crashes (1, 2, ...)."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2 ** max(0, quick_crashes - 1))


@dataclass
class ServiceRecord:
    """One service's restart history, as the supervisor sees it."""

    started_at: float
    restarts: int = 0
    quick_crashes: int = 0  # exits in a row, each before stable_after_s
    restart_at: float | None = None  # set while a restart waits for its backoff
    awaiting_ready: bool = False  # restarted, not yet seen SERVING
    exits: list[int | None] = field(default_factory=list)


def describe_exit(code: int | None) -> str:
    """'code 1' or 'signal SIGKILL' (Popen reports a signal as a negative code)."""
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Supervisor:
    """Call :meth:`tick` periodically; it restarts what has exited, when its backoff is over."""

    def __init__(
        self,
        stack: Stack,
        policy: RestartPolicy = RestartPolicy(),
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stack = stack
        self.policy = policy
        self.say = say
        self.clock = clock
        now = clock()
        self.records = {name: ServiceRecord(started_at=now) for name in stack.processes}

    def tick(self) -> None:
        now = self.clock()
        for name, proc in self.stack.processes.items():
            record = self.records.setdefault(name, ServiceRecord(started_at=now))
            if proc.running():
                self._check_ready(name, proc, record)
            elif record.restart_at is None:
                self._schedule(name, proc, record, now)
            elif now >= record.restart_at:
                self._restart(name, proc, record, now)

    def restart_counts(self) -> dict[str, int]:
        return {name: record.restarts for name, record in self.records.items()}

    def _schedule(self, name: str, proc: ServiceProcess, record: ServiceRecord, now: float) -> None:
        code = proc.proc.returncode if proc.proc else None
        ran_s = now - record.started_at
        record.exits.append(code)
        record.quick_crashes = 1 if ran_s >= self.policy.stable_after_s else record.quick_crashes + 1
        delay = self.policy.backoff_s(record.quick_crashes)
        record.restart_at = now + delay
        record.awaiting_ready = False
        self.say(
            f"{name} exited ({describe_exit(code)}) after {ran_s:.0f} s; "
            f"restart {record.restarts + 1} in {delay:.1f} s (log {proc.log_path})"
        )

    def _restart(self, name: str, proc: ServiceProcess, record: ServiceRecord, now: float) -> None:
        record.restarts += 1
        record.restart_at = None
        record.started_at = now
        record.awaiting_ready = True
        proc.restart(note=f"restart {record.restarts} by rlhf up after {describe_exit(record.exits[-1])}")
        self.say(f"{name} restarted (restart {record.restarts}, pid {proc.proc.pid if proc.proc else '?'})")

    def _check_ready(self, name: str, proc: ServiceProcess, record: ServiceRecord) -> None:
        if record.awaiting_ready and service_status(proc, timeout_s=0.5) == "SERVING":
            record.awaiting_ready = False
            self.say(f"{name} is SERVING again (restarts so far: {record.restarts})")
