"""PPO's own hyperparameters: the value head, GAE and the adaptive KL controller.

Defaults follow Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
Preferences") and Ouyang et al. 2022 (InstructGPT, PPO-ptx), scaled down to
the small models this project trains on one machine. The shared settings
(batch shape, optimizer, ``kl_coef``, lengths, ptx, seed) are
:class:`services.trainer.methods.base_config.MethodConfig`'s, the rollout and
reward ones :class:`services.trainer.methods.sampled_config.SampledConfig`'s;
the trainer composes this class as ``TrainerConfig.ppo``, so every field is a
flag ``--ppo-<name>`` and a variable ``RLHF_TRAINER_PPO_<NAME>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from services.trainer.methods.sampled_config import SampledConfig
from shared.config import Renamed, check, setting

KL_ESTIMATORS = ("k1", "abs", "mse", "k3")


@dataclass(frozen=True)
class PPOConfig(SampledConfig):
    """PPO with a KL penalty to a frozen reference, a value head and PPO-ptx (the shared
    defaults are PPO's: 16 prompts a step, one sample each, 2 epochs, kl_coef 0.1).

    ``learning_rate`` also trains the value head (PPO alone drifts at 1e-4 without
    corrections mixed in: docs/BENCHMARKS.md)."""

    renamed: ClassVar[tuple[Renamed, ...]] = (Renamed("ppo_epochs", "epochs"), Renamed("init_kl_coef", "kl_coef"))

    # --- the value head ------------------------------------------------------
    cliprange_value: float = setting(0.2, "value prediction may move this far from the rollout's value")
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

    # --- the KL penalty's estimator and controller ---------------------------
    kl_estimator: str = setting(
        "k1",
        "per-token KL estimator for the reward penalty: k1 (log-ratio), abs, mse, k3 (low-variance)",
        choices=KL_ESTIMATORS,
    )
    adaptive_kl: bool = setting(True, "adapt kl_coef toward target_kl (Ziegler et al. 2019, eq. 2)")
    target_kl: float = setting(6.0, "KL (nats per sequence) the adaptive controller steers toward")
    kl_horizon: int = setting(10000, "adaptive controller horizon in samples; larger = slower changes")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.value_warmup_steps >= 0, "value_warmup_steps", f"must be >= 0, got {self.value_warmup_steps}")
        check(self.cliprange_value > 0, "cliprange_value", f"must be > 0, got {self.cliprange_value}")
        check(self.vf_coef >= 0, "vf_coef", f"must be >= 0, got {self.vf_coef}")
        check(0 <= self.gamma <= 1, "gamma", f"must be in [0, 1], got {self.gamma}")
        check(0 <= self.lam <= 1, "lam", f"must be in [0, 1], got {self.lam}")
        check(
            self.kl_estimator in KL_ESTIMATORS,
            "kl_estimator",
            f"must be one of {', '.join(KL_ESTIMATORS)}, got {self.kl_estimator!r}",
        )
        check(self.target_kl > 0, "target_kl", f"must be > 0, got {self.target_kl}")
        check(self.kl_horizon >= 1, "kl_horizon", f"must be >= 1, got {self.kl_horizon}")

    @classmethod
    def upgrade_saved(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Before this release PPO's batch_size counted responses (prompts * samples_per_prompt)."""
        if "ppo_epochs" in values:
            values = {**values, "batch_size": values["batch_size"] // values.get("samples_per_prompt", 1)}
        return values
