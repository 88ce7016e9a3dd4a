"""Prometheus metrics of the trainer (the shared ones live in shared.metrics:
dead-lettered events by reason, consumer lag, events consumed)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FEEDBACK_ACCEPTED = Counter(
    "rlhf_trainer_feedback_accepted_total", "feedback events joined and written to the ledger, by kind", ["kind"]
)
FEEDBACK_DUPLICATES = Counter(
    "rlhf_trainer_feedback_duplicates_total", "feedback events ignored because their id or vote was seen before"
)
LEDGER_FEEDBACK = Gauge("rlhf_trainer_ledger_feedback", "feedback rows in the ledger, by kind", ["kind"])
LEDGER_GENERATIONS = Gauge("rlhf_trainer_ledger_generations", "generations in the ledger")
PENDING_JOIN = Gauge("rlhf_trainer_feedback_pending_join", "feedback held while waiting for its generation")
# Per-version satisfaction for dashboards: the label grows by one value per promoted version.
FEEDBACK_VERDICTS = Counter(
    "rlhf_trainer_feedback_verdicts_total",
    "ratings, flags and corrections joined to the policy version that wrote the response: "
    "satisfied (a positive rating) or unsatisfied (a negative rating, a flag, a correction)",
    ["model_version", "verdict"],
)
ROUND_FAILURES = Counter("rlhf_trainer_round_failures_total", "training rounds that failed with an error (retried)")
LAST_PROGRESS = Gauge(
    "rlhf_trainer_last_progress_timestamp_seconds",
    "when the training thread last made progress (a check finished or a policy step ran), Unix time",
)
GATE_KL_BUDGET = Gauge("rlhf_gate_kl_budget", "the gate's KL budget to the reference (--gate-kl-budget), nats")

# The last policy step of whichever method runs (--policy-method); a statistic the method lacks is NaN.
POLICY_MEAN_REWARD = Gauge("rlhf_policy_mean_reward", "mean reward-service score of the last policy step's samples")
POLICY_KL = Gauge("rlhf_policy_kl", "KL to the reference, nats per response, last policy step")
POLICY_KL_COEF = Gauge("rlhf_policy_kl_coef", "KL coefficient (kl_coef, beta) after the last policy step")
POLICY_LOSS = Gauge("rlhf_policy_loss", "the method's policy loss, last policy step")
POLICY_VALUE_LOSS = Gauge("rlhf_policy_value_loss", "clipped value loss, last policy step (PPO only)")
POLICY_CLIP_FRACTION = Gauge("rlhf_policy_clip_fraction", "share of tokens whose ratio was clipped, last policy step")
POLICY_ENTROPY = Gauge("rlhf_policy_entropy", "mean token entropy of the policy, last policy step")
POLICY_APPROX_KL = Gauge("rlhf_policy_approx_kl", "approximate KL between old and new policy, last policy step")
POLICY_SAMPLES_PER_SECOND = Gauge("rlhf_policy_samples_per_second", "samples (or examples) per second, last step")
POLICY_METHOD = Gauge("rlhf_policy_method", "1 for the policy method the trainer runs (--policy-method)", ["method"])
POLICY_STEPS = Counter("rlhf_policy_steps_total", "policy training steps run, by method", ["method"])
POLICY_GRAD_NORM = Gauge("rlhf_policy_grad_norm", "global gradient norm before clipping, last policy step")

CANDIDATES = Counter("rlhf_candidates_total", "candidates evaluated at the gate", ["kind", "result", "reason"])
PROMOTIONS = Counter("rlhf_promotions_total", "versions made current by promotion", ["kind", "trigger"])
ROLLBACKS = Counter("rlhf_rollbacks_total", "rollbacks to an earlier version", ["kind"])
CANARY_SHARE = Gauge("rlhf_canary_share", "share of users the policy canary serves (0 when no canary runs)")
CANARY_DECISIONS = Counter(
    "rlhf_canary_decisions_total",
    "policy canary rollouts started and ended, by decision (started, completed, rolled_back, ended_by_operator)",
    ["decision"],
)
CANARY_FEEDBACK = Gauge(
    "rlhf_canary_feedback", "feedback events judged in the running canary, by role (canary, stable)", ["role"]
)
CANARY_SCORE = Gauge(
    "rlhf_canary_score", "mean feedback score in the running canary, by role (canary, stable)", ["role"]
)
REWARD_HELDOUT_ACCURACY = Gauge("rlhf_reward_heldout_accuracy", "held-out pairwise accuracy, by version role", ["role"])


def stat(stats, name: str) -> float:
    """``stats.<name>`` as a float; NaN where a method's stats lack it (DPO and KTO have no
    value loss, clip fraction, entropy or approximate KL: they sample nothing)."""
    value = getattr(stats, name, None)
    return float("nan") if value is None else float(value)


def export_policy_stats(stats, method: str = "ppo") -> None:
    """Set the rlhf_policy_* gauges from ``method``'s step stats: a PolicyUpdateStats (RLOO and
    GRPO: value_loss NaN, no critic) or a DPO/KTO PreferenceStats (what it lacks is NaN);
    count the step under ``method``."""
    POLICY_METHOD.labels(method).set(1)
    POLICY_STEPS.labels(method).inc()
    POLICY_GRAD_NORM.set(stat(stats, "grad_norm"))
    POLICY_MEAN_REWARD.set(stat(stats, "mean_score"))
    POLICY_KL.set(stat(stats, "kl"))
    POLICY_KL_COEF.set(stat(stats, "kl_coef"))
    POLICY_LOSS.set(stat(stats, "policy_loss"))
    POLICY_VALUE_LOSS.set(stat(stats, "value_loss"))
    POLICY_CLIP_FRACTION.set(stat(stats, "clipfrac"))
    POLICY_ENTROPY.set(stat(stats, "entropy"))
    POLICY_APPROX_KL.set(stat(stats, "approx_kl"))
    POLICY_SAMPLES_PER_SECOND.set(stat(stats, "samples_per_s"))
    LAST_PROGRESS.set_to_current_time()
