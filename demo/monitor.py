"""Watches the loop while `rlhf demo` runs: every interval it groups the
responses the simulated users saw by policy version, scores a sample of them
with the reward service (ScoreBatch), and asks the trainer (GetStatus, when a
trainer runs) for its state and the KL of each candidate it evaluated.

All numbers come from the running services or the judge; nothing is assumed.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import grpc

from demo.plot import LoopSeries, SeriesPoint, VersionSummary
from shared.grpc.channels import ClientTLS, open_channel
from shared.proto.rlhf.v1 import common_pb2, reward_pb2, reward_pb2_grpc, trainer_pb2, trainer_pb2_grpc

# Candidate metric names that hold the KL to the reference, most specific first.
_KL_METRIC_NAMES = ("kl_to_reference", "kl", "kl_mean", "mean_kl")
_KL_BUDGET_METRIC_NAMES = ("kl_budget", "max_kl")
REWARD_SAMPLE_PER_VERSION = 32


def kl_from_metrics(metrics: dict[str, float]) -> float | None:
    for name in _KL_METRIC_NAMES:
        if name in metrics:
            return float(metrics[name])
    for name, value in metrics.items():  # a name the gate chose that still says KL
        if "kl" in name.lower() and not any(w in name.lower() for w in ("coef", "budget", "max", "target")):
            return float(value)
    return None


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
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._tls = tls
        self._rng = random.Random(seed)
        self._last_at = self.started
        self._channels = []
        self._reward = reward_pb2_grpc.RewardServiceStub(self._channel(reward_addr)) if reward_addr else None
        self._trainer = trainer_pb2_grpc.TrainerServiceStub(self._channel(trainer_addr)) if trainer_addr else None
        self.trainer_status: trainer_pb2.TrainerStatus | None = None
        self.kl_by_version: dict[str, float] = {}
        self.last_error = ""
        self._explicit_budget = series.kl_budget is not None

    def _channel(self, address: str):
        channel = open_channel(address, self._tls)
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    # --- one interval -------------------------------------------------------------
    def sample(self, stats) -> list[SeriesPoint]:
        """Add one point per policy version that served since the last call."""
        now = time.monotonic()
        fresh = [r for r in stats.snapshot_recent() if r.at > self._last_at]
        self._last_at = now
        self._poll_trainer()
        by_version = defaultdict(list)
        for r in fresh:
            by_version[r.model_version].append(r)
        ppo_kl = None
        if self.trainer_status is not None and self.trainer_status.HasField("last_policy_update"):
            ppo_kl = self.trainer_status.last_policy_update.kl if self.trainer_status.last_policy_update.step else None
        points = []
        for version, served in by_version.items():
            reward, reward_version = self._mean_reward(served)
            point = SeriesPoint(
                t_s=now - self.started,
                version=version,
                responses=len(served),
                satisfaction=sum(r.good for r in served) / len(served),
                mean_reward=reward,
                reward_version=reward_version,
                kl=self.kl_by_version.get(version),
                ppo_kl=ppo_kl,
            )
            self.series.add(point)
            points.append(point)
        return points

    def _mean_reward(self, served) -> tuple[float | None, str]:
        if self._reward is None:
            return None, ""
        answered = [r for r in served if r.response.strip()]  # the reward service refuses empty responses
        picked = (
            answered
            if len(answered) <= REWARD_SAMPLE_PER_VERSION
            else self._rng.sample(answered, REWARD_SAMPLE_PER_VERSION)
        )
        if not picked:
            return None, ""
        request = reward_pb2.ScoreBatchRequest(
            items=[reward_pb2.ScoreRequest(prompt=r.prompt, response=r.response) for r in picked]
        )
        try:
            reply = self._reward.ScoreBatch(request, timeout=30.0, metadata=self._metadata)
        except grpc.RpcError as exc:
            self.last_error = f"ScoreBatch: {exc.code().name if exc.code() else '?'}: {exc.details()}"
            return None, ""
        return (sum(reply.scores) / len(reply.scores) if reply.scores else None), reply.model_version

    def _poll_trainer(self) -> None:
        if self._trainer is None:
            return
        try:
            status = self._trainer.GetStatus(trainer_pb2.GetStatusRequest(), timeout=5.0, metadata=self._metadata)
        except grpc.RpcError as exc:
            self.last_error = f"GetStatus: {exc.code().name if exc.code() else '?'}: {exc.details()}"
            return
        self.trainer_status = status
        for candidate in status.recent_candidates:
            if candidate.kind not in (common_pb2.MODEL_KIND_POLICY, common_pb2.MODEL_KIND_UNSPECIFIED):
                continue
            metrics = dict(candidate.metrics)
            kl = kl_from_metrics(metrics)
            if kl is not None and candidate.promoted:
                self.kl_by_version[candidate.version] = kl
            if not self._explicit_budget:
                for name in _KL_BUDGET_METRIC_NAMES:
                    if name in metrics:
                        self.series.kl_budget = float(metrics[name])

    def trainer_line(self) -> str:
        status = self.trainer_status
        if self._trainer is None:
            return "trainer: not running"
        if status is None:
            return "trainer: no status yet" + (f" ({self.last_error})" if self.last_error else "")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(status.feedback_counts.items())) or "no feedback yet"
        line = (
            f"trainer: {trainer_pb2.TrainerState.Name(status.state).removeprefix('TRAINER_STATE_').lower()}"
            f"  policy {status.policy_version or '?'}  reward {status.reward_version or '?'}  ledger: {counts}"
        )
        if status.last_policy_update.step:
            line += (
                f"  policy step {status.last_policy_update.step}: reward {status.last_policy_update.mean_reward:.3f}"
                f" KL {status.last_policy_update.kl:.2f}"
            )
        return line

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
