"""The part of `rlhf demo` every application shares: start the stack, let the app's
simulated users run for --minutes while its monitor samples the loop, show it live,
then stop the users and the stack and let the app save what was measured.

An application plugs in through :class:`LiveApp` (the demo world's in demo_cmd.py, the
assistant's in demo_assistant.py). Ctrl-C (or SIGTERM) only asks to stop: the stack is
always stopped and what was measured is still saved.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LiveApp:
    """What an application brings to the shared live loop.

    - ``start_simulator(stack, duration_s)``: its simulated users, started, against the stack;
    - ``make_monitor(stack, simulator)``: an object with ``sample(stats)``, ``summarise(stats)``,
      ``close()`` and ``series`` (with a ``notes`` list);
    - ``render(simulator, monitor, elapsed_s, total_s)``: the live view (a rich renderable);
    - ``finish(simulator, monitor, stack, console)``: save and print the results; returns the exit code.
    """

    start_simulator: Callable[[Any, float], Any]
    make_monitor: Callable[[Any, Any], Any]
    render: Callable[[Any, Any, float, float], Any]
    finish: Callable[[Any, Any, Any, Any], int]


def monitor_addresses(stack) -> dict[str, str | None]:
    """The reward and trainer addresses an app's monitor watches (None: not running)."""
    return {
        "reward_addr": stack.address("reward") if "reward" in stack.processes else None,
        "trainer_addr": stack.address("trainer") if "trainer" in stack.processes else None,
    }


def run_totals(stats, stack) -> dict[str, Any]:
    """What every app's run saves about itself: requests, feedback, minutes, services."""
    return {
        "requests": stats.requests,
        "request_errors": stats.request_errors,
        "feedback_accepted": dict(stats.feedback_sent),
        "feedback_failed": stats.feedback_errors,
        "minutes": (time.monotonic() - stats.started) / 60,
        "services": list(stack.processes),
    }


def run_live_loop(stack, app: LiveApp, *, minutes: float, sample_every_s: float, console) -> int:
    """Start ``stack`` (not started yet), run ``app`` on it for ``minutes``, stop it all."""
    from rich.live import Live

    from rlhf_cli.stack import describe_process

    stop = threading.Event()
    previous_handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    simulator = monitor = None
    try:
        stack.start_broker()
        with console.status("starting services") as status:
            stack.start_services(on_progress=lambda name, st: status.update(f"{name}: {st}"))
        for proc in stack.processes.values():
            console.print(f"  {describe_process(proc)}")
        if stop.is_set():
            return 130
        total_s = minutes * 60
        simulator = app.start_simulator(stack, total_s)
        monitor = app.make_monitor(stack, simulator)
        started = simulator.stats.started
        next_sample = time.monotonic() + sample_every_s
        with Live(app.render(simulator, monitor, 0.0, total_s), console=console, refresh_per_second=2) as live:
            while simulator.running() and not stop.wait(0.5):
                if time.monotonic() >= next_sample:
                    monitor.sample(simulator.stats)
                    next_sample += sample_every_s
                dead = stack.check_alive()
                if dead:
                    monitor.series.notes.append(f"{', '.join(dead)} exited during the demo")
                    console.print(f"[red]{', '.join(dead)} exited; stopping (see {stack.log_dir})[/red]")
                    break
                live.update(app.render(simulator, monitor, time.monotonic() - started, total_s))
            if stop.is_set():
                monitor.series.notes.append("stopped early by the user")
            live.update("stopping the simulated users…")
            simulator.stop()
            monitor.sample(simulator.stats)
            live.update(app.render(simulator, monitor, time.monotonic() - started, total_s))
        monitor.summarise(simulator.stats)
        return app.finish(simulator, monitor, stack, console)
    finally:
        if simulator is not None:
            simulator.stop(flush_timeout_s=5.0)
        if monitor is not None:
            monitor.close()
        codes = stack.stop()
        console.print("stopped: " + (", ".join(f"{n} ({c})" for n, c in codes.items()) or "nothing was running"))
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
