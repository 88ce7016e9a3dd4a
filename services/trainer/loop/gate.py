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

Asking again is a new test of the same hypothesis, on the same prompts: with
a fixed z, a candidate re-tested every round would pass by chance sooner or
later. So the k-th test of one candidate lineage spends only part of the
error rate, alpha_k = alpha * 6 / (pi^2 k^2) (the parts sum to alpha over all
k), and :func:`retest_z` turns that into the stricter z of test k. The
trainer also samples fresh responses for each re-test.

The reward is the current reward model's score; when that version is an
ensemble of heads, it is its conservative score, mean - k * std over the heads
(shared.models.reward.ensemble: what the policy was trained on, and the score that is
hardest to win by exploiting one head's mistakes). Each evaluation records
which score it holds (``reward_score``); the decision says which one it used,
and refuses to compare two evaluations scored differently (the reward version
changed between them). The heads' mean gain is reported beside it, not gated.

An optional judge (a plug-in the application supplies) is a second opinion:
when both evaluations carry judge scores, a candidate the judge finds
significantly worse is refused even if the reward model likes it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PolicyEvaluation:
    """What the gate looks at for one policy on the held-out prompts."""

    mean_reward: float
    kl: float  # nats per response to the frozen reference (policy v1)
    # Mean reward per held-out prompt, in the evaluation's prompt order: the
    # paired test needs both policies' rewards on the same prompts.
    prompt_rewards: tuple[float, ...] = ()
    # The judge plug-in's mean score per held-out prompt (empty without a judge).
    prompt_judge_scores: tuple[float, ...] = ()
    extra: dict[str, float] = field(default_factory=dict)  # reported, not gated
    # Which score prompt_rewards hold ("single head", "conservative: ...";
    # shared.models.reward.ensemble.describe_score); "" when the reward callable does not say.
    reward_score: str = ""
    # An ensemble's mean over heads per prompt (empty for a single head): reported, not gated.
    prompt_mean_rewards: tuple[float, ...] = ()

    def as_metrics(self) -> dict[str, float]:
        return {"mean_reward": self.mean_reward, "kl": self.kl, **self.extra}


@dataclass(frozen=True)
class GateBudget:
    min_reward_gain: float
    kl_budget: float
    # One-sided z for the gain's confidence bound at a candidate's first test:
    # 1.645 is 95%; 0 compares the means alone (every positive gain passes).
    confidence_z: float = 1.645


def retest_z(confidence_z: float, test_number: int) -> float:
    """The z of a candidate's ``test_number``-th test (1-based) under alpha
    spending alpha_k = alpha * 6 / (pi^2 k^2), alpha = P(Z > confidence_z).
    The first test is already stricter than a single test (z 1.88 for 1.645):
    that is the price of being allowed to ask again."""
    if test_number < 1:
        raise ValueError(f"test_number must be >= 1, got {test_number}")
    if confidence_z <= 0:
        return confidence_z  # means only: nothing to spend
    normal = statistics.NormalDist()
    alpha = 1.0 - normal.cdf(confidence_z)
    if alpha <= 0.0:
        return confidence_z  # beyond float precision already: no stricter z to be had
    return normal.inv_cdf(1.0 - alpha * 6.0 / (math.pi**2 * test_number**2))


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
    judge_gain: RewardGain | None = None  # the judge's paired gain, when a judge scored both
    z: float = 0.0  # the z this test used (stricter on re-tests)
    reward_score: str = ""  # which score the gain is in (PolicyEvaluation.reward_score)
    mean_gain: RewardGain | None = None  # an ensemble's mean-over-heads gain, reported beside the gated one


@dataclass(frozen=True)
class GateScores:
    """Rewards of gate samples: the gated scores, the ensemble's means (None for
    a single head or a callable that gives none) and which score was used."""

    scores: list[float]
    means: list[float] | None
    used: str


def gate_scores(reward_fn: Callable, prompts: Sequence[str], responses: Sequence[str]) -> GateScores:
    """Score gate samples with the trainer's reward callable. A callable with
    ``score_ensemble`` (services.trainer.reward_client.RewardClient) gives the
    conservative score of an ensemble version plus its heads' means, and says
    which score it used (``score_used``); a plain callable's scores are gated as they are."""
    if hasattr(reward_fn, "score_ensemble"):
        scored = reward_fn.score_ensemble(list(prompts), list(responses))
        used = str(getattr(reward_fn, "score_used", ""))
        ensemble = bool(used) and not used.startswith("single")
        return GateScores(list(scored.scores), list(scored.means) if ensemble else None, used)
    return GateScores([float(x) for x in reward_fn(list(prompts), list(responses))], None, "")


def _paired_gain(a: Sequence[float], b: Sequence[float], fallback: float) -> RewardGain:
    if len(a) >= 2 and len(a) == len(b):
        diffs = [x - y for x, y in zip(a, b)]
        return RewardGain(statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)), len(diffs))
    return RewardGain(fallback, 0.0, 0)


def paired_reward_gain(candidate: PolicyEvaluation, current: PolicyEvaluation) -> RewardGain:
    """The per-prompt paired gain when both evaluations have rewards for the same
    prompts (at least two), else the plain difference of means with no error bar."""
    return _paired_gain(candidate.prompt_rewards, current.prompt_rewards, candidate.mean_reward - current.mean_reward)


def paired_judge_gain(candidate: PolicyEvaluation, current: PolicyEvaluation) -> RewardGain | None:
    """The judge's paired gain over the prompts both judge scores cover (finite in both), or None."""
    pairs = [
        (a, b)
        for a, b in zip(candidate.prompt_judge_scores, current.prompt_judge_scores)
        if math.isfinite(a) and math.isfinite(b)
    ]
    if not pairs or len(candidate.prompt_judge_scores) != len(current.prompt_judge_scores):
        return None
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    return _paired_gain(a, b, statistics.fmean(a) - statistics.fmean(b))


def promote_if_better(
    candidate: PolicyEvaluation, current: PolicyEvaluation, budget: GateBudget, test_number: int = 1
) -> GateDecision:
    """Promote ``candidate`` over ``current`` only if its reward gain is significant at this
    test's z (:func:`retest_z`), its KL within ``budget``, and the judge (if any) does not
    find it significantly worse."""
    values = (
        candidate.mean_reward,
        candidate.kl,
        current.mean_reward,
        *candidate.prompt_rewards,
        *current.prompt_rewards,
    )
    if not all(math.isfinite(v) for v in values):
        return GateDecision(
            False,
            "non_finite_metrics",
            f"candidate {candidate.as_metrics()}, current mean_reward {current.mean_reward}",
        )
    if candidate.reward_score != current.reward_score:
        # Not a verdict on the candidate: the reward version changed between the two evaluations.
        return GateDecision(
            False,
            "reward_score_changed",
            f"candidate scored with {candidate.reward_score!r}, current with {current.reward_score!r}",
            keep_training=True,
        )
    gain, z = paired_reward_gain(candidate, current), retest_z(budget.confidence_z, test_number)
    judged = paired_judge_gain(candidate, current)
    mean_gain = None
    if candidate.prompt_mean_rewards and current.prompt_mean_rewards:
        mean_gain = _paired_gain(
            candidate.prompt_mean_rewards,
            current.prompt_mean_rewards,
            statistics.fmean(candidate.prompt_mean_rewards) - statistics.fmean(current.prompt_mean_rewards),
        )
    decided = {
        "gain": gain,
        "judge_gain": judged,
        "z": z,
        "reward_score": candidate.reward_score,
        "mean_gain": mean_gain,
    }
    if candidate.kl > budget.kl_budget:
        return GateDecision(
            False,
            "kl_over_budget",
            f"KL to reference {candidate.kl:.4g} exceeds the budget {budget.kl_budget:.4g}",
            **decided,
        )
    under = f"reward score ({candidate.reward_score}): " if candidate.reward_score else ""
    numbers = under + (
        f"mean reward {candidate.mean_reward:.4g} vs {current.mean_reward:.4g}: gain {gain.mean:.4g} "
        f"+- {gain.standard_error:.3g} (standard error over {gain.prompts} paired prompts), "
        f"lower bound {gain.lower(z):.4g} at z {z:.3g} (test {test_number} of this candidate)"
    )
    if judged is not None and judged.prompts >= 2 and judged.upper(z) < 0:
        return GateDecision(
            False,
            "judge_regressed",
            f"{numbers}; but the judge's gain {judged.mean:.4g} "
            f"+- {judged.standard_error:.3g} has upper bound {judged.upper(z):.4g} < 0",
            **decided,
        )
    if gain.lower(z) >= budget.min_reward_gain:
        return GateDecision(
            True,
            "passed",
            f"{numbers} >= required {budget.min_reward_gain:.4g}; KL {candidate.kl:.4g} within {budget.kl_budget:.4g}",
            **decided,
        )
    if gain.upper(z) < 0:
        return GateDecision(False, "reward_regressed", f"{numbers}; upper bound {gain.upper(z):.4g} < 0", **decided)
    return GateDecision(
        False,
        "reward_gain_too_small",
        f"{numbers} < required {budget.min_reward_gain:.4g}",
        keep_training=True,
        **decided,
    )
