"""The promotion gate: a pure decision on two evaluations.

A candidate policy replaces the current one only if it is measurably better
and has not drifted too far from the frozen reference (KL to policy v1 within
``kl_budget``): a reward model can be gamed, and the KL budget bounds how far
the policy may chase it.

"Measurably better" is a paired test, because a mean over a few hundred
sampled responses moves by more than a typical PPO round's gain from
sampling alone. Both policies answer the same held-out prompts; the gain is
the mean over prompts of (candidate - current) reward, and the candidate is
promoted only when the one-sided lower confidence bound of that gain,
``gain - z * standard_error``, reaches ``min_reward_gain``. Pairing by prompt
removes the prompts' own spread (some questions are simply easier) from the
noise. A candidate whose gain is not yet significant is not thrown away: the
trainer keeps training it (``keep_training``) and asks again after the next
round; only a candidate that is significantly worse, non-finite, or over the
KL budget is discarded. The reason is a short code, used as a metric label.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PolicyEvaluation:
    """What the gate looks at for one policy on the held-out prompts."""

    mean_reward: float
    kl: float  # nats per response to the frozen reference (policy v1)
    # Mean reward per held-out prompt, in the evaluation's prompt order: the
    # paired test needs both policies' rewards on the same prompts.
    prompt_rewards: tuple[float, ...] = ()
    extra: dict[str, float] = field(default_factory=dict)  # reported, not gated (satisfaction, ...)

    def as_metrics(self) -> dict[str, float]:
        return {"mean_reward": self.mean_reward, "kl": self.kl, **self.extra}


@dataclass(frozen=True)
class GateBudget:
    min_reward_gain: float
    kl_budget: float
    # One-sided z for the gain's confidence bound: 1.645 is 95%; 0 compares
    # the means alone (every positive gain passes).
    confidence_z: float = 1.645


@dataclass(frozen=True)
class RewardGain:
    """Candidate minus current mean reward, with its standard error (0 when unpaired)."""

    mean: float
    standard_error: float
    prompts: int

    def lower(self, z: float) -> float:
        return self.mean - z * self.standard_error

    def upper(self, z: float) -> float:
        return self.mean + z * self.standard_error


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # "passed", "kl_over_budget", "reward_gain_too_small", "reward_regressed", "non_finite_metrics"
    detail: str = ""  # for people: the numbers behind the reason
    keep_training: bool = False  # not promoted, but worth more training (the gain is not yet significant)
    gain: RewardGain | None = None  # the paired reward gain, once the metrics are finite


def paired_reward_gain(candidate: PolicyEvaluation, current: PolicyEvaluation) -> RewardGain:
    """The per-prompt paired gain when both evaluations have rewards for the same
    prompts (at least two), else the plain difference of means with no error bar."""
    a, b = candidate.prompt_rewards, current.prompt_rewards
    if len(a) >= 2 and len(a) == len(b):
        diffs = [x - y for x, y in zip(a, b)]
        return RewardGain(statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)), len(diffs))
    return RewardGain(candidate.mean_reward - current.mean_reward, 0.0, 0)


def promote_if_better(candidate: PolicyEvaluation, current: PolicyEvaluation, budget: GateBudget) -> GateDecision:
    """Promote ``candidate`` over ``current`` only if its reward gain is significant and its KL within ``budget``."""
    values = (candidate.mean_reward, candidate.kl, current.mean_reward, *candidate.prompt_rewards,
              *current.prompt_rewards)
    if not all(math.isfinite(v) for v in values):
        return GateDecision(False, "non_finite_metrics", f"candidate {candidate.as_metrics()}, current "
                            f"mean_reward {current.mean_reward}")
    gain, z = paired_reward_gain(candidate, current), budget.confidence_z
    if candidate.kl > budget.kl_budget:
        return GateDecision(False, "kl_over_budget",
                            f"KL to reference {candidate.kl:.4g} exceeds the budget {budget.kl_budget:.4g}", gain=gain)
    numbers = (f"mean reward {candidate.mean_reward:.4g} vs {current.mean_reward:.4g}: gain {gain.mean:.4g} "
               f"+- {gain.standard_error:.3g} (standard error over {gain.prompts} paired prompts), "
               f"lower bound {gain.lower(z):.4g}")
    if gain.lower(z) >= budget.min_reward_gain:
        return GateDecision(True, "passed", f"{numbers} >= required {budget.min_reward_gain:.4g}; "
                            f"KL {candidate.kl:.4g} within {budget.kl_budget:.4g}", gain=gain)
    if gain.upper(z) < 0:
        return GateDecision(False, "reward_regressed", f"{numbers}; upper bound {gain.upper(z):.4g} < 0", gain=gain)
    return GateDecision(False, "reward_gain_too_small", f"{numbers} < required {budget.min_reward_gain:.4g}",
                        keep_training=True, gain=gain)
