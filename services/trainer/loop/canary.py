"""Canary rollouts judged by live feedback.

A candidate that passed the gate (or an operator's ``rlhf promote --canary-share``)
first serves a sticky share of the users (the store's CANARY pointer; policy
replicas route by a hash of user_id) while CURRENT, the stable version, serves
everyone else. Users' feedback on either version's generations is scored per
event:

- a rating: its score (a thumb up +1, a thumb down -1, a score in [-1, 1]);
- a flag: -1;
- a preference between a canary answer and a stable answer: +1 for the chosen
  version and -1 for the other (a preference between two answers of the same
  version says nothing about the versions, and is skipped).

Corrections are not counted (apps ask for them of good answers too). Only
generations created since the canary started count (by the policy replicas'
clocks), so both sides are judged on the same period's traffic, and a version
canaried again is not judged on an earlier rollout's feedback.

The test is the difference of the mean scores, canary minus stable, with the
standard error of a difference of two independent means,
``sqrt(var_c / n_c + var_s / n_s)``. Once both versions have
``min_feedback`` events it decides, once: the canary is rolled back when it is
significantly worse (``difference + z * standard_error < 0``, one-sided), and
completed (made CURRENT) otherwise. With ``max_s`` set, a canary still short
of feedback when it runs out is decided the same way on what arrived
(completed when there is too little to show it worse: it already passed the
gate). Every step is a ModelUpdateEvent (the Promoter publishes them).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.trainer import metrics as tm
from services.trainer.data.ledger_lineage import VersionFeedback
from shared.models.store import CanaryPointer

log = logging.getLogger(__name__)

POLICY = "policy"
RUNNING, COMPLETED, ROLLED_BACK, ENDED_BY_OPERATOR = "running", "completed", "rolled_back", "ended_by_operator"


@dataclass(frozen=True)
class CanarySettings:
    share: float  # share of users a gate-passed candidate serves first; 0 = no canary (promote at once)
    min_feedback: int  # feedback events each version needs before the decision
    confidence_z: float  # one-sided z of "significantly worse"
    max_s: float = 0.0  # decide on what arrived after this long (0 = wait for min_feedback)


@dataclass(frozen=True)
class FeedbackSample:
    """Feedback scores of one version: count, mean and (sample) variance."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float]) -> FeedbackSample:
        n = len(values)
        mean = statistics.fmean(values) if n else float("nan")
        return cls(n, mean, statistics.variance(values) if n >= 2 else float("nan"))


@dataclass(frozen=True)
class CanaryVerdict:
    decision: str  # RUNNING, COMPLETED or ROLLED_BACK
    reason: str  # "waiting_for_feedback", "significantly_worse", "not_worse", "time_limit"
    detail: str
    canary: FeedbackSample
    stable: FeedbackSample
    difference: float
    standard_error: float


@dataclass(frozen=True)
class CanaryReport:
    """What `rlhf status` shows: the canary, its feedback and the (latest) decision."""

    pointer: CanaryPointer
    verdict: CanaryVerdict
    decision: str  # RUNNING, COMPLETED, ROLLED_BACK or ENDED_BY_OPERATOR
    min_feedback: int

    @property
    def active(self) -> bool:
        return self.decision == RUNNING


def feedback_scores(rows: Sequence[VersionFeedback], canary: str, stable: str) -> tuple[list[float], list[float]]:
    """(canary scores, stable scores), one per feedback event as the module doc says."""
    scores: dict[str, list[float]] = {canary: [], stable: []}
    for row in rows:
        if row.kind == "rating" and row.score is not None and math.isfinite(row.score):
            scores.get(row.version, []).append(float(row.score))
        elif row.kind == "flag":
            scores.get(row.version, []).append(-1.0)
        elif row.kind == "preference" and row.other_version != row.version:
            scores.get(row.version, []).append(1.0)
            scores.get(row.other_version, []).append(-1.0)
    return scores[canary], scores[stable]


def judge_canary(
    canary_scores: Sequence[float], stable_scores: Sequence[float], settings: CanarySettings, elapsed_s: float
) -> CanaryVerdict:
    """Roll back when the canary is significantly worse, complete when it is not, once
    both versions have ``min_feedback`` events (or ``max_s`` ran out); else keep running."""
    canary, stable = FeedbackSample.of(canary_scores), FeedbackSample.of(stable_scores)
    enough = min(canary.n, stable.n) >= settings.min_feedback
    timed_out = settings.max_s > 0 and elapsed_s >= settings.max_s
    testable = min(canary.n, stable.n) >= 2
    difference = canary.mean - stable.mean if canary.n and stable.n else float("nan")
    error = math.sqrt(canary.variance / canary.n + stable.variance / stable.n) if testable else float("nan")
    numbers = (
        f"canary {canary.n} events, mean {canary.mean:.3g}; stable {stable.n} events, mean {stable.mean:.3g}; "
        f"difference {difference:.3g} +- {error:.3g} (standard error)"
    )
    upper = difference + settings.confidence_z * error
    if not enough and not timed_out:
        detail = f"{numbers}; each version needs {settings.min_feedback} events (--canary-min-feedback)"
        return CanaryVerdict(RUNNING, "waiting_for_feedback", detail, canary, stable, difference, error)
    reason = "time_limit" if not enough else ""
    if testable and upper < 0:
        detail = f"{numbers}: upper bound {upper:.3g} at z {settings.confidence_z:.3g} < 0"
        return CanaryVerdict(ROLLED_BACK, reason or "significantly_worse", detail, canary, stable, difference, error)
    detail = f"{numbers}: not significantly worse" + (f" (upper bound {upper:.3g})" if testable else "")
    if reason:
        detail += f"; decided after --canary-max-s {settings.max_s:g} s"
    return CanaryVerdict(COMPLETED, reason or "not_worse", detail, canary, stable, difference, error)


class CanaryMonitor:
    """Judges the policy canary on every check and completes or rolls it back through the promoter."""

    def __init__(
        self,
        store,
        promoter,
        settings: CanarySettings,
        read_feedback: Callable[[str, str, float], list[VersionFeedback]],
    ):
        self.store = store
        self.promoter = promoter
        self.settings = settings
        self.read_feedback = read_feedback  # (canary, stable, since) -> rows, from the ledger
        self.last: CanaryReport | None = None

    def active(self) -> bool:
        return self.store.canary(POLICY) is not None

    def check(self, now: float | None = None) -> CanaryReport | None:
        """Judge the running canary (if any) and act on the verdict; returns the latest report."""
        pointer = self.store.canary(POLICY)
        if pointer is None:
            self._ended_elsewhere()
            return self.last
        canary_scores, stable_scores = feedback_scores(
            self.read_feedback(pointer.version, pointer.stable_version, pointer.started_at),
            pointer.version,
            pointer.stable_version,
        )
        verdict = judge_canary(canary_scores, stable_scores, self.settings, (now or time.time()) - pointer.started_at)
        self._export(pointer, verdict)
        if verdict.decision != RUNNING:
            self._decide(pointer, verdict)
        self.last = CanaryReport(pointer, verdict, verdict.decision, self.settings.min_feedback)
        return self.last

    def _decide(self, pointer: CanaryPointer, verdict: CanaryVerdict) -> None:
        metrics = {
            "canary_feedback": float(verdict.canary.n),
            "stable_feedback": float(verdict.stable.n),
            "canary_score": verdict.canary.mean,
            "stable_score": verdict.stable.mean,
            "difference": verdict.difference,
            "standard_error": verdict.standard_error,
        }
        reason = f"canary {verdict.reason}: {verdict.detail}"
        if verdict.decision == COMPLETED:
            self.promoter.complete_canary(POLICY, pointer.version, reason, metrics)
        else:
            self.promoter.rollback_canary(POLICY, pointer.version, reason, metrics)
        tm.CANARY_DECISIONS.labels(verdict.decision).inc()
        tm.CANARY_SHARE.set(0.0)
        log.info(
            "canary decided",
            extra={"version": pointer.version, "decision": verdict.decision, "detail": verdict.detail},
        )

    def _ended_elsewhere(self) -> None:
        """The pointer is gone without our decision: an operator's Promote or Rollback ended it."""
        tm.CANARY_SHARE.set(0.0)
        if self.last is not None and self.last.active:
            self.last = CanaryReport(self.last.pointer, self.last.verdict, ENDED_BY_OPERATOR, self.last.min_feedback)

    @staticmethod
    def _export(pointer: CanaryPointer, verdict: CanaryVerdict) -> None:
        tm.CANARY_SHARE.set(pointer.share)
        for role, sample in (("canary", verdict.canary), ("stable", verdict.stable)):
            tm.CANARY_FEEDBACK.labels(role).set(sample.n)
            tm.CANARY_SCORE.labels(role).set(sample.mean)
