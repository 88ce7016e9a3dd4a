"""Every PPO hyperparameter in one frozen dataclass.

Defaults follow Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
Preferences") and Ouyang et al. 2022 (InstructGPT, PPO-ptx), scaled down to
the small models this project trains on one machine; they are the online
trainer's defaults too. Each field is declared with
:func:`shared.config.setting`; the trainer composes this class
(``TrainerConfig.ppo``), so every field is a trainer flag ``--ppo-<name>``
and variable ``RLHF_TRAINER_PPO_<NAME>`` with this help text, declared here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import check, setting

KL_ESTIMATORS = ("k1", "abs", "mse", "k3")


@dataclass(frozen=True)
class PPOConfig:
    """PPO with a KL penalty to a frozen reference, a value head and PPO-ptx."""

    # --- batch shape -------------------------------------------------------
    batch_size: int = setting(16, "responses rolled out (and scored) per PPO step")
    samples_per_prompt: int = setting(
        1,
        "responses sampled per prompt: a step takes batch_size / samples_per_prompt prompts (raise batch_size "
        "with it for larger rollout batches at the same number of prompts)",
    )
    mini_batch_size: int = setting(8, "rollouts per optimizer step; must divide batch_size")
    ppo_epochs: int = setting(2, "passes over the rollout batch per PPO step")

    # --- optimizer ---------------------------------------------------------
    learning_rate: float = setting(
        1e-4,
        "AdamW learning rate for the policy and the value head (with corrections mixed in; PPO alone "
        "drifts at 1e-4: docs/BENCHMARKS.md)",
    )
    adam_eps: float = setting(1e-8, "AdamW epsilon")
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay")
    max_grad_norm: float = setting(1.0, "clip the global gradient norm to this (0 disables)")

    # --- PPO losses --------------------------------------------------------
    cliprange: float = setting(0.2, "policy ratio is clipped to [1-cliprange, 1+cliprange]")
    cliprange_value: float = setting(0.2, "value prediction may move this far from the rollout's value")
    policy_loss_coef: float = setting(
        1.0,
        "weight of the clipped policy loss; 0 leaves only the value and ptx terms, i.e. SFT on the "
        "demonstrations: the baseline that shows what PPO itself adds",
    )
    vf_coef: float = setting(0.1, "weight of the value loss against the policy loss (shared trunk)")
    value_warmup_steps: int = setting(
        0,
        "value-only steps when a trainer starts from a stored policy (its value head is new, zero): only the "
        "value head learns, on the value loss, before the policy moves on its advantages (0 disables)",
    )
    gamma: float = setting(1.0, "discount per response token in GAE")
    lam: float = setting(0.95, "GAE lambda: 0 = one-step TD, 1 = Monte Carlo returns")
    whiten_advantages: bool = setting(True, "normalise advantages to mean 0, variance 1 over the batch")
    whiten_rewards: bool = setting(False, "scale per-token rewards to unit variance before GAE")

    # --- KL penalty to the reference --------------------------------------
    kl_estimator: str = setting(
        "k1",
        "per-token KL estimator for the reward penalty: k1 (log-ratio), abs, mse, k3 (low-variance)",
        choices=KL_ESTIMATORS,
    )
    init_kl_coef: float = setting(0.1, "initial (or, without adaptive_kl, fixed) KL coefficient beta")
    adaptive_kl: bool = setting(True, "adapt beta toward target_kl (Ziegler et al. 2019, eq. 2)")
    target_kl: float = setting(6.0, "KL (nats per sequence) the adaptive controller steers toward")
    kl_horizon: int = setting(10000, "adaptive controller horizon in samples; larger = slower changes")

    # --- rewards -----------------------------------------------------------
    score_clip: float = setting(0.0, "clip reward-model scores to [-score_clip, score_clip] (0 disables)")
    normalize_scores: bool = setting(
        False,
        "normalise scores by the running mean/std of every score seen (Welford; state kept in the checkpoint); "
        "the EOS penalty then counts in standard deviations",
    )
    missing_eos_penalty: float = setting(
        0.0, "subtracted from the score of a response that hit max_new_tokens without EOS (0 disables)"
    )

    # --- rollouts ----------------------------------------------------------
    max_prompt_length: int = setting(128, "prompt tokens kept (from the right) when rolling out")
    max_new_tokens: int = setting(24, "longest response sampled per rollout")
    temperature: float = setting(1.0, "sampling temperature; logprobs are taken at the same temperature")
    top_k: int = setting(0, "sample only from the top k tokens (0 = whole vocabulary, as PPO assumes)")
    top_p: float = setting(1.0, "nucleus sampling mass (1.0 = whole vocabulary, as PPO assumes)")

    # --- PPO-ptx: corrections as demonstrations --------------------------
    ptx_coef: float = setting(1.0, "weight of the SFT loss on demonstrations mixed into each optimizer step")
    ptx_batch_size: int = setting(16, "demonstrations per optimizer step (cycled through the given list)")

    # --- reproducibility ---------------------------------------------------
    seed: int = setting(0, "seed for sampling and minibatch shuffling")
    num_threads: int = setting(
        0, "torch CPU threads (0 leaves torch's default; the trainer sets its --torch-threads here)"
    )

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.samples_per_prompt >= 1, "samples_per_prompt", f"must be >= 1, got {self.samples_per_prompt}")
        check(
            self.batch_size % self.samples_per_prompt == 0,
            "samples_per_prompt",
            f"must divide batch_size ({self.batch_size}), got {self.samples_per_prompt}",
        )
        check(self.value_warmup_steps >= 0, "value_warmup_steps", f"must be >= 0, got {self.value_warmup_steps}")
        check(self.mini_batch_size >= 1, "mini_batch_size", f"must be >= 1, got {self.mini_batch_size}")
        check(
            self.batch_size % self.mini_batch_size == 0,
            "mini_batch_size",
            f"must divide batch_size ({self.batch_size}), got {self.mini_batch_size}",
        )
        check(self.ppo_epochs >= 1, "ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0 (0 disables), got {self.max_grad_norm}")
        check(0 < self.cliprange < 1, "cliprange", f"must be in (0, 1), got {self.cliprange}")
        check(self.cliprange_value > 0, "cliprange_value", f"must be > 0, got {self.cliprange_value}")
        check(self.policy_loss_coef >= 0, "policy_loss_coef", f"must be >= 0, got {self.policy_loss_coef}")
        check(self.vf_coef >= 0, "vf_coef", f"must be >= 0, got {self.vf_coef}")
        check(0 <= self.gamma <= 1, "gamma", f"must be in [0, 1], got {self.gamma}")
        check(0 <= self.lam <= 1, "lam", f"must be in [0, 1], got {self.lam}")
        check(
            self.kl_estimator in KL_ESTIMATORS,
            "kl_estimator",
            f"must be one of {', '.join(KL_ESTIMATORS)}, got {self.kl_estimator!r}",
        )
        check(self.init_kl_coef >= 0, "init_kl_coef", f"must be >= 0, got {self.init_kl_coef}")
        check(self.target_kl > 0, "target_kl", f"must be > 0, got {self.target_kl}")
        check(self.kl_horizon >= 1, "kl_horizon", f"must be >= 1, got {self.kl_horizon}")
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
    def prompts_per_step(self) -> int:
        return self.batch_size // self.samples_per_prompt

    @property
    def num_mini_batches(self) -> int:
        return self.batch_size // self.mini_batch_size
