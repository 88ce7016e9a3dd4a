"""Watches the loop while `rlhf demo` runs: every interval it groups the
responses the simulated users saw by policy version, scores a sample of them
with the reward service (ScoreBatch), and asks the trainer (GetStatus, when a
trainer runs) for its state and the KL of each candidate it evaluated.

All numbers come from the running services or the judge; nothing is assumed.
"""

from __future__ import annotations

import time
from collections import defaultdict

from demo.plot import LoopSeries, SeriesPoint, VersionSummary
from shared.grpc.channels import ClientTLS
from shared.loop_watch import LoopWatch


class LoopMonitor:
    def __init__(
        self,
        series: LoopSeries,
        *,
        reward_addr: str | None,
        trainer_addr: str | None,
        auth_token: str = "",
        tls: ClientTLS | None = None,
        started: float | None = None,
        seed: int = 0,
    ):
        self.series = series
        self.started = started if started is not None else time.monotonic()
        self._last_at = self.started
        self.watch = LoopWatch(
            reward_addr=reward_addr, trainer_addr=trainer_addr, auth_token=auth_token, tls=tls, seed=seed
        )
        self.reward, self.trainer = self.watch.reward, self.watch.trainer
        self._explicit_budget = series.kl_budget is not None

    def close(self) -> None:
        self.watch.close()

    @property
    def kl_by_version(self) -> dict[str, float]:
        return self.trainer.kl_by_version

    def trainer_line(self) -> str:
        return self.trainer.line()

    # --- one interval -------------------------------------------------------------
    def sample(self, stats) -> list[SeriesPoint]:
        """Add one point per policy version that served since the last call."""
        now = time.monotonic()
        fresh = [r for r in stats.snapshot_recent() if r.at > self._last_at]
        self._last_at = now
        self.series.kl_budget = self.watch.poll_trainer(self.series.kl_budget, self._explicit_budget)
        by_version = defaultdict(list)
        for r in fresh:
            by_version[r.model_version].append(r)
        points = []
        for version, served in by_version.items():
            reward, reward_version = self.reward.mean_reward([(r.prompt, r.response) for r in served])
            point = SeriesPoint(
                t_s=now - self.started,
                version=version,
                responses=len(served),
                satisfaction=sum(r.good for r in served) / len(served),
                mean_reward=reward,
                reward_version=reward_version,
                kl=self.kl_by_version.get(version),
                ppo_kl=self.trainer.last_step_kl(),
            )
            self.series.add(point)
            points.append(point)
        return points

    # --- the end ------------------------------------------------------------------
    def summarise(self, stats) -> None:
        """Per-version totals over the whole run, into ``series.versions``."""
        first_seen: dict[str, float] = {}
        for point in self.series.points:
            first_seen.setdefault(point.version, point.t_s)
        for version, tally in stats.tallies().items():
            self.series.versions[version] = VersionSummary(
                responses=tally.responses,
                satisfaction=tally.satisfaction,
                axes=tally.axis_rates(),
                mean_reward=self.series.mean_reward(version),
                kl=self.kl_by_version.get(version, self.series.latest_kl(version)),
                first_seen_s=first_seen.get(version),
                user_utility=tally.mean_utility,
            )
