"""A policy candidate at the gate: evaluated against the current version on the
held-out prompts from traffic (services.trainer.loop.gate decides), and, when it
passes, promoted with its metrics and lineage in the manifest."""

from __future__ import annotations

from services.trainer.config import TrainerConfig
from services.trainer.loop.gate import GateBudget, GateDecision, promote_if_better
from services.trainer.loop.judge_plugin import JudgeFn
from services.trainer.loop.lineage import CandidateLineage
from services.trainer.loop.policy_round import PolicyRounds


def judge_candidate(
    rounds: PolicyRounds,
    config: TrainerConfig,
    current: str | None,
    prompts: list[str],
    budget: GateBudget,
    judge: JudgeFn | None,
) -> tuple[GateDecision, dict[str, float]]:
    """The gate's decision on the trainer's candidate, and the metrics behind it."""
    if current != rounds.state.policy_version:
        return GateDecision(False, "current_changed", f"current moved to {current} during the round"), {}
    if len(prompts) < config.gate_min_prompts:
        # Not a verdict on the candidate: it keeps training until traffic gives the gate enough prompts.
        decision = GateDecision(
            False,
            "heldout_too_small",
            f"{len(prompts)} held-out prompts from traffic; "
            f"the gate needs {config.gate_min_prompts} (--gate-min-prompts)",
            keep_training=True,
        )
        return decision, {}
    rounds.state.gate_tests += 1
    test = rounds.state.gate_tests  # fresh samples per re-test; the gate's z spends alpha per test
    evaluate = dict(
        samples_per_prompt=config.gate_samples_per_prompt,
        max_new_tokens=config.gate_max_new_tokens,
        seed=test,
        judge=judge,
    )
    candidate = rounds.evaluate(prompts, **evaluate)
    baseline = rounds.evaluate(prompts, version=current, **evaluate)
    decision = promote_if_better(candidate, baseline, budget, test_number=test)
    metrics = {
        **candidate.as_metrics(),
        "current_mean_reward": baseline.mean_reward,
        "current_kl": baseline.kl,
        "ppo_step": float(rounds.trainer.step_count),  # the name manifests have always carried
        "kl_budget": budget.kl_budget,
        "gate_prompts": float(len(prompts)),
        "gate_test": float(test),
        "gate_z": decision.z,
    }
    if "judge_score" in baseline.extra:
        metrics["current_judge_score"] = baseline.extra["judge_score"]
    if decision.gain is not None:
        metrics.update(reward_gain=decision.gain.mean, reward_gain_standard_error=decision.gain.standard_error)
    if decision.mean_gain is not None:  # an ensemble: its heads' mean gain, beside the conservative one
        metrics.update(
            ensemble_mean_gain=decision.mean_gain.mean,
            ensemble_mean_gain_standard_error=decision.mean_gain.standard_error,
        )
    if decision.judge_gain is not None:
        metrics.update(
            judge_gain=decision.judge_gain.mean, judge_gain_standard_error=decision.judge_gain.standard_error
        )
    return decision, metrics


def promote_candidate(
    promoter,
    rounds: PolicyRounds,
    config: TrainerConfig,
    current: str | None,
    decision: GateDecision,
    metrics: dict[str, float],
    lineage: CandidateLineage,
    gate_reward: str,
) -> str:
    """Store the candidate that passed as a new policy version (served first to the canary share, if
    any); returns the version."""
    update = promoter.promote_new(
        "policy",
        rounds.save_policy,
        parent_version=current,
        eval_metrics=metrics,
        reason=f"gate passed: {decision.detail}",
        notes={
            "source": f"rlhf trainer {config.policy_method.upper()}",
            **lineage.notes(gate_reward, config.user_caps),
            "gate_reward_score": decision.reward_score,  # which score the gate's test used
        },
        expected_current=current,
        canary_share=config.canary_share,
        base_version=rounds.adapter_base_version(),  # a LoRA run's candidate: its adapter on this base
    )
    return str(update.version)
