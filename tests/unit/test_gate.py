"""The promotion gate: paired reward gain and KL budget, as a pure function."""

from __future__ import annotations

import math

import pytest

from services.trainer.loop.gate import GateBudget, PolicyEvaluation, paired_reward_gain, promote_if_better

BUDGET = GateBudget(min_reward_gain=0.1, kl_budget=5.0)
CURRENT = PolicyEvaluation(mean_reward=1.0, kl=0.5)


def test_better_candidate_within_budget_is_promoted():
    decision = promote_if_better(PolicyEvaluation(1.2, 3.0), CURRENT, BUDGET)
    assert decision.promote and decision.reason == "passed"


def test_gain_exactly_at_the_threshold_passes():
    assert promote_if_better(PolicyEvaluation(1.1 + 1e-9, 1.0), CURRENT, BUDGET).promote


@pytest.mark.parametrize(
    "candidate,reason",
    [
        (PolicyEvaluation(1.05, 1.0), "reward_gain_too_small"),
        (PolicyEvaluation(0.5, 1.0), "reward_regressed"),
        (PolicyEvaluation(3.0, 5.5), "kl_over_budget"),
        (PolicyEvaluation(math.nan, 1.0), "non_finite_metrics"),
        (PolicyEvaluation(2.0, math.inf), "non_finite_metrics"),
    ],
)
def test_candidate_is_discarded_with_the_reason(candidate, reason):
    decision = promote_if_better(candidate, CURRENT, BUDGET)
    assert not decision.promote and decision.reason == reason and decision.detail


def test_only_a_gain_that_is_not_yet_significant_keeps_training():
    assert promote_if_better(PolicyEvaluation(1.05, 1.0), CURRENT, BUDGET).keep_training
    for refused in (PolicyEvaluation(0.5, 1.0), PolicyEvaluation(3.0, 5.5), PolicyEvaluation(math.nan, 1.0)):
        assert not promote_if_better(refused, CURRENT, BUDGET).keep_training


def _paired(rewards: list[float], kl: float = 1.0) -> PolicyEvaluation:
    return PolicyEvaluation(sum(rewards) / len(rewards), kl, prompt_rewards=tuple(rewards))


def test_paired_gain_is_the_mean_per_prompt_difference_with_its_standard_error():
    gain = paired_reward_gain(_paired([2.0, 4.0, 6.0, 8.0]), _paired([1.0, 4.0, 4.0, 7.0]))
    # differences 1, 0, 2, 1: mean 1, sample sd sqrt(2/3), standard error sqrt(2/3)/2
    assert gain.mean == pytest.approx(1.0)
    assert gain.standard_error == pytest.approx(math.sqrt(2 / 3) / 2)
    assert gain.prompts == 4


def test_unpaired_evaluations_compare_means_without_an_error_bar():
    gain = paired_reward_gain(PolicyEvaluation(1.5, 0.0), PolicyEvaluation(1.0, 0.0))
    assert (gain.mean, gain.standard_error, gain.prompts) == (0.5, 0.0, 0)


def test_a_noisy_gain_is_not_promoted_but_a_consistent_one_is():
    current = _paired([0.0, 5.0, 1.0, 6.0, 2.0, 7.0])
    noisy = _paired([3.5, 2.5, 4.5, 3.5, 5.5, 4.5])  # +0.5 on average, but -2.5 or +3.5 per prompt
    consistent = _paired([0.4, 5.4, 1.6, 6.5, 2.5, 7.6])  # +0.5 on average, +0.4..+0.6 per prompt
    zero_gain = GateBudget(min_reward_gain=0.0, kl_budget=5.0)
    assert noisy.mean_reward == pytest.approx(consistent.mean_reward)
    decision = promote_if_better(noisy, current, zero_gain)
    assert not decision.promote and decision.reason == "reward_gain_too_small" and decision.keep_training
    assert promote_if_better(consistent, current, zero_gain).promote


def test_a_consistent_loss_is_a_regression():
    decision = promote_if_better(_paired([0.5, 1.5, 2.5]), _paired([1.0, 2.0, 3.1]), BUDGET)
    assert decision.reason == "reward_regressed" and not decision.keep_training


def test_z_zero_compares_means_only():
    noisy, current = _paired([3.0, 2.0, 4.0]), _paired([1.0, 5.0, 2.0])
    assert promote_if_better(noisy, current, GateBudget(0.0, 5.0, confidence_z=0.0)).promote


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


def test_retest_z_spends_alpha_so_repeated_tests_keep_the_error_rate():
    from statistics import NormalDist

    from services.trainer.loop.gate import retest_z

    normal = NormalDist()
    zs = [retest_z(1.645, k) for k in range(1, 200)]
    assert zs == sorted(zs) and zs[0] > 1.645  # stricter than one test, stricter each time
    spent = sum(1 - normal.cdf(z) for z in zs)
    assert spent < 1 - normal.cdf(1.645)  # all re-tests together spend at most alpha
    assert 1 - normal.cdf(zs[0]) == pytest.approx(0.05 * 6 / math.pi**2, rel=1e-3)
    assert retest_z(0.0, 7) == 0.0


def test_a_gain_significant_at_the_first_test_is_not_at_the_fifth():
    # differences 0.2, 0.8, 0.1, 0.9: mean 0.5, standard error 0.204; lower bound at z 1.88 is 0.117 > 0,
    # at the fifth test's z (3.03) it is -0.119 < 0.
    candidate, current = _paired([1.2, 1.8, 1.1, 1.9]), _paired([1.0, 1.0, 1.0, 1.0])
    free = GateBudget(min_reward_gain=0.0, kl_budget=5.0)
    first, fifth = promote_if_better(candidate, current, free, 1), promote_if_better(candidate, current, free, 5)
    assert first.promote and not fifth.promote and fifth.keep_training and fifth.z > first.z


def test_the_judge_can_refuse_a_candidate_the_reward_model_likes():
    candidate = PolicyEvaluation(
        3.0, 1.0, prompt_rewards=(3.0, 3.0, 3.1, 2.9), prompt_judge_scores=(0.0, 0.0, 0.1, 0.0)
    )
    current = PolicyEvaluation(1.0, 0.5, prompt_rewards=(1.0, 1.0, 1.1, 0.9), prompt_judge_scores=(1.0, 0.9, 1.0, 1.0))
    decision = promote_if_better(candidate, current, GateBudget(0.0, 5.0))
    assert not decision.promote and decision.reason == "judge_regressed"
    assert decision.judge_gain is not None and decision.judge_gain.mean < 0
    # NaN judge scores (prompts the judge does not know) are left out of the pairing.
    unknown = PolicyEvaluation(3.0, 1.0, prompt_rewards=(3.0, 3.0, 3.1, 2.9), prompt_judge_scores=(math.nan,) * 4)
    assert promote_if_better(unknown, current, GateBudget(0.0, 5.0)).promote


class _EnsembleReward:
    """A reward callable shaped like services.trainer.reward_client.RewardClient
    serving an ensemble: fixed member scores per response, combined with the real
    conservative-score math."""

    def __init__(self, members: dict[str, list[float]], k: float):
        from shared.models.reward.ensemble import describe_score

        self.members, self.k = members, k
        self.score_used = describe_score(len(next(iter(members.values()))), k)

    def score_ensemble(self, prompts, responses):
        import torch

        from services.trainer.reward_client import ScoredPairs
        from shared.models.reward.ensemble import conservative_scores, member_mean, member_std

        rows = torch.tensor([self.members[r] for r in responses], dtype=torch.float64)
        return ScoredPairs(
            conservative_scores(rows, self.k).tolist(), member_mean(rows).tolist(), member_std(rows).tolist()
        )

    def __call__(self, prompts, responses):
        return self.score_ensemble(prompts, responses).scores


def _evaluation(reward_fn, responses: list[str]) -> PolicyEvaluation:
    from services.trainer.loop.gate import gate_scores

    scored = gate_scores(reward_fn, ["q"] * len(responses), responses)
    return PolicyEvaluation(
        mean_reward=sum(scored.scores) / len(scored.scores),
        kl=1.0,
        prompt_rewards=tuple(scored.scores),
        reward_score=scored.used,
        prompt_mean_rewards=tuple(scored.means or ()),
    )


def test_with_an_ensemble_the_gate_compares_conservative_scores_and_says_so():
    # The candidate's answers have a higher mean over heads, but the heads disagree
    # about them: the conservative score (mean - 1 * std) finds no gain.
    reward = _EnsembleReward(
        {"safe": [1.0, 1.0, 1.0], "exploit": [0.0, 1.5, 3.0], "safe2": [1.1, 1.1, 1.1], "exploit2": [0.1, 1.6, 3.1]},
        k=1.0,
    )
    current = _evaluation(reward, ["safe", "safe2"] * 4)
    candidate = _evaluation(reward, ["exploit", "exploit2"] * 4)
    assert candidate.reward_score == "conservative: mean - 1 * std of 3 heads"
    assert candidate.prompt_rewards[0] == pytest.approx(1.5 - math.sqrt(1.5))  # hand-computed: std of 0, 1.5, 3
    decision = promote_if_better(candidate, current, GateBudget(min_reward_gain=0.0, kl_budget=5.0, confidence_z=0))
    assert not decision.promote and decision.reason == "reward_regressed"
    assert decision.reward_score == candidate.reward_score and "conservative" in decision.detail
    assert decision.mean_gain is not None and decision.mean_gain.mean == pytest.approx(0.5)  # reported, not gated
    # A plain callable (a single head): gated on its scores as they are, and nothing claims otherwise.
    plain = _evaluation(lambda prompts, responses: [2.0] * len(responses), ["a", "b"])
    assert plain.reward_score == "" and plain.prompt_mean_rewards == ()


def test_evaluations_under_different_scores_are_not_compared():
    reward = _EnsembleReward({"a": [1.0, 2.0], "b": [2.0, 3.0]}, k=1.0)
    candidate = _evaluation(reward, ["b", "b"])
    single = PolicyEvaluation(mean_reward=0.0, kl=0.5, prompt_rewards=(0.0, 0.0), reward_score="single head")
    decision = promote_if_better(candidate, single, BUDGET)
    assert not decision.promote and decision.reason == "reward_score_changed" and decision.keep_training
