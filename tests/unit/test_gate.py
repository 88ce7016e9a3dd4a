"""The promotion gate: reward gain and KL budget, as a pure function."""

from __future__ import annotations

import math

import pytest

from services.trainer.gate import GateBudget, PolicyEvaluation, promote_if_better

BUDGET = GateBudget(min_reward_gain=0.1, kl_budget=5.0)
CURRENT = PolicyEvaluation(mean_reward=1.0, kl=0.5)


def test_better_candidate_within_budget_is_promoted():
    decision = promote_if_better(PolicyEvaluation(1.2, 3.0), CURRENT, BUDGET)
    assert decision.promote and decision.reason == "passed"


def test_gain_exactly_at_the_threshold_passes():
    assert promote_if_better(PolicyEvaluation(1.1 + 1e-9, 1.0), CURRENT, BUDGET).promote


@pytest.mark.parametrize("candidate,reason", [
    (PolicyEvaluation(1.05, 1.0), "reward_gain_too_small"),
    (PolicyEvaluation(0.5, 1.0), "reward_gain_too_small"),
    (PolicyEvaluation(3.0, 5.5), "kl_over_budget"),
    (PolicyEvaluation(math.nan, 1.0), "non_finite_metrics"),
    (PolicyEvaluation(2.0, math.inf), "non_finite_metrics"),
])
def test_candidate_is_discarded_with_the_reason(candidate, reason):
    decision = promote_if_better(candidate, CURRENT, BUDGET)
    assert not decision.promote and decision.reason == reason and decision.detail


def test_kl_is_checked_before_the_reward_gain():
    # A policy that games the reward model far from the reference is refused even with a big gain.
    decision = promote_if_better(PolicyEvaluation(100.0, 50.0), CURRENT, BUDGET)
    assert decision.reason == "kl_over_budget"


def test_non_finite_current_reward_never_promotes():
    decision = promote_if_better(PolicyEvaluation(1.0, 0.1), PolicyEvaluation(math.nan, 0.0), BUDGET)
    assert not decision.promote


def test_evaluation_metrics_include_the_reported_extras():
    evaluation = PolicyEvaluation(0.3, 1.5, extra={"satisfaction": 0.4})
    assert evaluation.as_metrics() == {"mean_reward": 0.3, "kl": 1.5, "satisfaction": 0.4}
