"""The promotion gate: a pure decision on two evaluations.

A candidate policy replaces the current one only if it is measurably better
(mean reward on held-out prompts rises by at least ``min_reward_gain``) and
has not drifted too far from the frozen reference (KL to policy v1 within
``kl_budget``): a reward model can be gamed, and the KL budget bounds how far
the policy may chase it. The reason is a short code, used as a metric label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PolicyEvaluation:
    """What the gate looks at for one policy on the held-out prompts."""

    mean_reward: float
    kl: float  # nats per response to the frozen reference (policy v1)
    extra: dict[str, float] = field(default_factory=dict)  # reported, not gated (satisfaction, ...)

    def as_metrics(self) -> dict[str, float]:
        return {"mean_reward": self.mean_reward, "kl": self.kl, **self.extra}


@dataclass(frozen=True)
class GateBudget:
    min_reward_gain: float
    kl_budget: float


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # "passed", "kl_over_budget", "reward_gain_too_small", "non_finite_metrics"
    detail: str = ""  # for people: the numbers behind the reason


def promote_if_better(candidate: PolicyEvaluation, current: PolicyEvaluation, budget: GateBudget) -> GateDecision:
    """Promote ``candidate`` over ``current`` only if its reward gain and KL are within ``budget``."""
    values = (candidate.mean_reward, candidate.kl, current.mean_reward)
    if not all(math.isfinite(v) for v in values):
        return GateDecision(False, "non_finite_metrics", f"candidate {candidate.as_metrics()}, current "
                            f"mean_reward {current.mean_reward}")
    if candidate.kl > budget.kl_budget:
        return GateDecision(False, "kl_over_budget",
                            f"KL to reference {candidate.kl:.4g} exceeds the budget {budget.kl_budget:.4g}")
    gain = candidate.mean_reward - current.mean_reward
    if gain < budget.min_reward_gain:
        return GateDecision(False, "reward_gain_too_small",
                            f"mean reward {candidate.mean_reward:.4g} vs {current.mean_reward:.4g} (gain {gain:.4g} "
                            f"< required {budget.min_reward_gain:.4g})")
    return GateDecision(True, "passed", f"mean reward gain {gain:.4g}, KL {candidate.kl:.4g} "
                        f"within {budget.kl_budget:.4g}")
