"""What a live view of the loop asks the services: the trainer's state (GetStatus), the
KL to the reference of each policy version it promoted and the KL budget its gate
applies (:class:`TrainerWatch`), and the reward model's mean score of a sample of
served answers (:class:`RewardProbe`).

Both applications' `rlhf demo` monitors (demo/monitor.py, assistant/live_view.py) watch
the loop through this, the way any dashboard of an application would; nothing here
knows an application's world.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import grpc

from shared.grpc.channels import ClientTLS, open_channel
from shared.proto.rlhf.v1 import common_pb2, reward_pb2, reward_pb2_grpc, trainer_pb2, trainer_pb2_grpc

# Candidate metric names that hold the KL to the reference, most specific first.
_KL_METRIC_NAMES = ("kl_to_reference", "kl", "kl_mean", "mean_kl")
_KL_BUDGET_METRIC_NAMES = ("kl_budget", "max_kl")
REWARD_SAMPLE_PER_VERSION = 32


def version_sort_key(version: str) -> tuple[int, str]:
    """v2 before v10; anything odd last."""
    digits = version[1:] if version.startswith("v") else ""
    return (int(digits), version) if digits.isdigit() else (1 << 30, version)


def kl_from_metrics(metrics: dict[str, float]) -> float | None:
    """The KL to the reference among a gate candidate's metrics, whatever the gate named it."""
    for name in _KL_METRIC_NAMES:
        if name in metrics:
            return float(metrics[name])
    for name, value in metrics.items():  # a name the gate chose that still says KL
        if "kl" in name.lower() and not any(w in name.lower() for w in ("coef", "budget", "max", "target")):
            return float(value)
    return None


def kl_budget_from_metrics(metrics: dict[str, float]) -> float | None:
    for name in _KL_BUDGET_METRIC_NAMES:
        if name in metrics:
            return float(metrics[name])
    return None


class TrainerWatch:
    """Polls one trainer; keeps its last status, the KL of every promoted policy version
    and the gate's KL budget. A failed poll keeps the last good status and says why in
    :attr:`last_error`."""

    def __init__(self, channel: grpc.Channel | None, metadata: tuple[tuple[str, str], ...] = ()):
        self._trainer = trainer_pb2_grpc.TrainerServiceStub(channel) if channel is not None else None
        self._metadata = metadata
        self.status: trainer_pb2.TrainerStatus | None = None
        self.kl_by_version: dict[str, float] = {}
        self.kl_budget: float | None = None
        self.last_error = ""

    @property
    def running(self) -> bool:
        return self._trainer is not None

    def poll(self) -> trainer_pb2.TrainerStatus | None:
        if self._trainer is None:
            return None
        try:
            status = self._trainer.GetStatus(trainer_pb2.GetStatusRequest(), timeout=5.0, metadata=self._metadata)
        except grpc.RpcError as exc:
            self.last_error = f"GetStatus: {exc.code().name if exc.code() else '?'}: {exc.details()}"
            return self.status
        self.status = status
        for candidate in status.recent_candidates:
            if candidate.kind not in (common_pb2.MODEL_KIND_POLICY, common_pb2.MODEL_KIND_UNSPECIFIED):
                continue
            metrics = dict(candidate.metrics)
            kl = kl_from_metrics(metrics)
            if kl is not None and candidate.promoted:
                self.kl_by_version[candidate.version] = kl
            budget = kl_budget_from_metrics(metrics)
            if budget is not None:
                self.kl_budget = budget
        return status

    def last_step_kl(self) -> float | None:
        """The KL of the trainer's last policy step (the candidate being trained), if any."""
        status = self.status
        if status is None or not status.HasField("last_policy_update") or not status.last_policy_update.step:
            return None
        return status.last_policy_update.kl

    def line(self) -> str:
        """One line for a live view: state, serving versions, ledger counts, last policy step."""
        status = self.status
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


class RewardProbe:
    """Scores a random sample of (prompt, response) pairs with the reward service
    (ScoreBatch) and returns their mean and the reward version that scored them."""

    def __init__(
        self,
        channel: grpc.Channel | None,
        metadata: tuple[tuple[str, str], ...] = (),
        *,
        seed: int = 0,
        sample_size: int = REWARD_SAMPLE_PER_VERSION,
    ):
        self._reward = reward_pb2_grpc.RewardServiceStub(channel) if channel is not None else None
        self._metadata = metadata
        self._rng = random.Random(seed)
        self._sample_size = sample_size
        self.last_error = ""

    def mean_reward(self, pairs: Sequence[tuple[str, str]]) -> tuple[float | None, str]:
        if self._reward is None:
            return None, ""
        answered = [p for p in pairs if p[1].strip()]  # the reward service refuses empty responses
        picked = answered if len(answered) <= self._sample_size else self._rng.sample(answered, self._sample_size)
        if not picked:
            return None, ""
        request = reward_pb2.ScoreBatchRequest(
            items=[reward_pb2.ScoreRequest(prompt=prompt, response=response) for prompt, response in picked]
        )
        try:
            reply = self._reward.ScoreBatch(request, timeout=30.0, metadata=self._metadata)
        except grpc.RpcError as exc:
            self.last_error = f"ScoreBatch: {exc.code().name if exc.code() else '?'}: {exc.details()}"
            return None, ""
        return (sum(reply.scores) / len(reply.scores) if reply.scores else None), reply.model_version


class LoopWatch:
    """A live view's probes of the running loop, over their own channels: :attr:`reward`
    (RewardProbe) and :attr:`trainer` (TrainerWatch); an address left None is not watched."""

    def __init__(
        self,
        *,
        reward_addr: str | None,
        trainer_addr: str | None,
        auth_token: str = "",
        tls: ClientTLS | None = None,
        seed: int = 0,
    ):
        metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._channels = [open_channel(a, tls) if a else None for a in (reward_addr, trainer_addr)]
        self.reward = RewardProbe(self._channels[0], metadata, seed=seed)
        self.trainer = TrainerWatch(self._channels[1], metadata)

    def poll_trainer(self, kl_budget: float | None, explicit_budget: bool) -> float | None:
        """Poll the trainer; the KL budget to plot: the one given, else the gate's."""
        self.trainer.poll()
        if explicit_budget or self.trainer.kl_budget is None:
            return kl_budget
        return self.trainer.kl_budget

    def close(self) -> None:
        for channel in self._channels:
            if channel is not None:
                channel.close()
