"""Hyperparameters of the critic-free policy-gradient methods, one frozen dataclass each.

Both methods sample ``samples_per_prompt`` (k) responses for each of
``batch_size`` prompts, score them, and give every response one advantage
computed from its own prompt's group, so no value model is trained:

- RLOO (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j, with the KL to
  the reference folded into the reward, r_i = score_i - beta * KL_i (one KL
  per sequence, as TRL's RLOO does);
- GRPO (Shao et al. 2024): A_i = (r_i - mean r) / (std r + eps) on the raw
  scores, with the KL as a separate loss term, beta * mean_t k3_t.

The update is PPO's clipped surrogate on the rollout's (old) log-probs,
``num_epochs`` passes, with the PPO-ptx SFT term on corrections. At the
defaults a step generates batch_size * k = 16 responses and makes 4 optimizer
updates, as a default PPO step does (16 rollouts, 2 epochs x 2 minibatches):
the methods compare at equal compute. The trainer composes each class
(``TrainerConfig.rloo``, ``TrainerConfig.grpo``): every field is a flag
``--rloo-<name>`` / ``--grpo-<name>`` and a variable ``RLHF_TRAINER_RLOO_<NAME>``
/ ``RLHF_TRAINER_GRPO_<NAME>``, declared here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shared.config import check, setting


@dataclass(frozen=True)
class PolicyGradientConfig:
    """What RLOO and GRPO share: k samples per prompt, a clipped surrogate, no critic."""

    # Where the KL to the reference enters: "reward" (r - beta * KL per sequence) or "loss" (+ beta * k3).
    kl_placement: ClassVar[str] = "reward"

    # --- batch shape -------------------------------------------------------
    batch_size: int = setting(4, "prompts per step; each is sampled samples_per_prompt times")
    samples_per_prompt: int = setting(4, "responses sampled per prompt (k); the baseline is the other samples'")
    mini_batch_size: int = setting(8, "responses per optimizer step; must divide batch_size * samples_per_prompt")
    num_epochs: int = setting(2, "passes over the step's responses (more than 1 makes the ratio clip matter)")

    # --- optimizer ---------------------------------------------------------
    learning_rate: float = setting(1e-4, "AdamW learning rate of the policy")
    adam_eps: float = setting(1e-8, "AdamW epsilon")
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay")
    max_grad_norm: float = setting(1.0, "clip the global gradient norm to this (0 disables)")

    # --- losses ------------------------------------------------------------
    cliprange: float = setting(0.2, "policy ratio is clipped to [1-cliprange, 1+cliprange]")
    policy_loss_coef: float = setting(
        1.0, "weight of the policy-gradient loss; 0 leaves only the ptx term (SFT on corrections), the ablation"
    )
    kl_coef: float = setting(0.05, "beta: weight of the KL to the frozen reference (fixed)")

    # --- rewards -----------------------------------------------------------
    normalize_scores: bool = setting(
        False, "normalise scores by the running mean/std of every score seen (state kept in the checkpoint)"
    )
    score_clip: float = setting(0.0, "clip reward-model scores to [-score_clip, score_clip] (0 disables)")
    missing_eos_penalty: float = setting(
        0.0, "subtracted from the score of a response that hit max_new_tokens without EOS (0 disables)"
    )

    # --- rollouts ----------------------------------------------------------
    max_prompt_length: int = setting(128, "prompt tokens kept (from the right) when rolling out")
    max_new_tokens: int = setting(24, "longest response sampled per rollout")
    temperature: float = setting(1.0, "sampling temperature; logprobs are taken at the same temperature")
    top_k: int = setting(0, "sample only from the top k tokens (0 = whole vocabulary)")
    top_p: float = setting(1.0, "nucleus sampling mass (1.0 = whole vocabulary)")

    # --- PPO-ptx: corrections as demonstrations (same semantics as PPO) ----
    ptx_coef: float = setting(1.0, "weight of the SFT loss on demonstrations mixed into each optimizer step")
    ptx_batch_size: int = setting(16, "demonstrations per optimizer step (cycled through the given list)")

    # --- reproducibility ---------------------------------------------------
    seed: int = setting(0, "seed for sampling and minibatch shuffling")
    num_threads: int = setting(0, "torch CPU threads (0 leaves torch's default; the trainer sets --torch-threads)")

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(
            self.samples_per_prompt >= 2,
            "samples_per_prompt",
            f"must be >= 2 (the baseline is the other samples), got {self.samples_per_prompt}",
        )
        check(self.mini_batch_size >= 1, "mini_batch_size", f"must be >= 1, got {self.mini_batch_size}")
        check(
            self.rollouts_per_step % self.mini_batch_size == 0,
            "mini_batch_size",
            f"must divide batch_size * samples_per_prompt ({self.rollouts_per_step}), got {self.mini_batch_size}",
        )
        check(self.num_epochs >= 1, "num_epochs", f"must be >= 1, got {self.num_epochs}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0 (0 disables), got {self.max_grad_norm}")
        check(0 < self.cliprange < 1, "cliprange", f"must be in (0, 1), got {self.cliprange}")
        check(self.policy_loss_coef >= 0, "policy_loss_coef", f"must be >= 0, got {self.policy_loss_coef}")
        check(self.kl_coef >= 0, "kl_coef", f"must be >= 0, got {self.kl_coef}")
        check(self.score_clip >= 0, "score_clip", f"must be >= 0 (0 disables), got {self.score_clip}")
        check(self.missing_eos_penalty >= 0, "missing_eos_penalty", f"must be >= 0, got {self.missing_eos_penalty}")
        check(self.max_prompt_length >= 1, "max_prompt_length", f"must be >= 1, got {self.max_prompt_length}")
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(self.top_k >= 0, "top_k", f"must be >= 0 (0 disables), got {self.top_k}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.ptx_coef >= 0, "ptx_coef", f"must be >= 0, got {self.ptx_coef}")
        check(self.ptx_batch_size >= 1, "ptx_batch_size", f"must be >= 1, got {self.ptx_batch_size}")
        check(self.num_threads >= 0, "num_threads", f"must be >= 0 (0 = torch default), got {self.num_threads}")

    @property
    def rollouts_per_step(self) -> int:
        return self.batch_size * self.samples_per_prompt

    @property
    def num_mini_batches(self) -> int:
        return self.rollouts_per_step // self.mini_batch_size


@dataclass(frozen=True)
class RLOOConfig(PolicyGradientConfig):
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024): the KL is part of each sequence's reward.

    kl_coef 0.05 is TRL's RLOO default; the paper's k=4 is the default k."""

    kl_placement: ClassVar[str] = "reward"


@dataclass(frozen=True)
class GRPOConfig(PolicyGradientConfig):
    """Group Relative Policy Optimization (Shao et al. 2024): group-normalised
    advantages, the KL (k3 estimator) as a loss term with the paper's beta 0.04."""

    kl_placement: ClassVar[str] = "loss"

    kl_coef: float = setting(0.04, "beta: weight of the k3 KL-to-reference loss term (GRPO's 0.04)")
    std_eps: float = setting(1e-4, "added to a group's score std before dividing (a tied group gets advantage 0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.std_eps > 0, "std_eps", f"must be > 0, got {self.std_eps}")
