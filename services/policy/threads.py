"""Picks the torch intra-op thread count that decodes fastest right now.

Why measured, not configured: on a 2-core machine two threads decode a batch
~1.4x faster than one while the machine is otherwise idle, but up to ~10x
slower while another process holds a core (the OpenMP workers wait for each
other at every op). Which count wins changes with the neighbours, so every
so often the decode loop times a few steps at the other count and a few at
the current one, back to back in the same batch, and keeps the faster.
"""

from __future__ import annotations

import logging
import statistics

import torch

log = logging.getLogger(__name__)


class ThreadTuner:
    def __init__(
        self, choices: tuple[int, ...], *, probe_every: int = 256, probe_steps: int = 5, max_probe_every: int = 4096
    ):
        self.choices = tuple(sorted(set(choices)))
        self.current = self.choices[0] if self.choices else 0
        self.base_probe_every = probe_every
        self.probe_every = probe_every
        self.max_probe_every = max_probe_every
        self.probe_steps = probe_steps
        self._since_probe = max(0, probe_every - 16)  # first probe early: start-up is when it matters most
        self._plan: list[int] = []
        self._times: dict[int, list[float]] = {}
        self._original = torch.get_num_threads()
        if self.current:
            torch.set_num_threads(self.current)

    def restore(self) -> None:
        """Give torch back the thread count it had (the setting is process-wide)."""
        if self.choices:
            torch.set_num_threads(self._original)

    def abandon_probe(self) -> None:
        """The batch changed shape (new batch, rows left): timings would not compare."""
        self._plan, self._times = [], {}
        if self.current and torch.get_num_threads() != self.current:
            torch.set_num_threads(self.current)

    def threads_for_next_step(self) -> int:
        if len(self.choices) < 2:
            return self.current
        if not self._plan:
            self._since_probe += 1
            if self._since_probe >= self.probe_every:
                self._since_probe = 0
                position = self.choices.index(self.current)
                other = self.choices[(position + 1) % len(self.choices)]
                self._plan = [other] * self.probe_steps + [self.current] * self.probe_steps
        threads = self._plan[0] if self._plan else self.current
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    def record(self, threads: int, seconds: float) -> None:
        if not self._plan:
            return
        self._plan.pop(0)
        self._times.setdefault(threads, []).append(seconds)
        if self._plan:
            return
        medians = {t: statistics.median(v) for t, v in self._times.items()}
        self._times = {}
        best = min(medians, key=medians.get)
        if best != self.current and medians[best] < 0.9 * medians[self.current]:
            log.info(
                "torch threads changed",
                extra={
                    "from_threads": self.current,
                    "to_threads": best,
                    "step_ms": {t: round(m * 1e3, 2) for t, m in medians.items()},
                },
            )
            self.current = best
            self.probe_every = self.base_probe_every
        else:  # probing costs when it loses: back off
            self.probe_every = min(self.probe_every * 2, self.max_probe_every)
        torch.set_num_threads(self.current)
