"""GRPO's settings: Group Relative Policy Optimization (Shao et al. 2024).

A_i = (r_i - mean r) / (std r + eps) on the raw scores, with the KL as a
separate loss term, kl_coef * mean_t k3_t (the paper's beta 0.04).
Flags ``--grpo-<name>``, variables ``RLHF_TRAINER_GRPO_<NAME>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from services.trainer.methods.base_config import method_defaults
from services.trainer.methods.policy_gradient.pg_config import PolicyGradientConfig
from shared.config import check, setting


@dataclass(frozen=True)
@method_defaults(kl_coef=0.04)
class GRPOConfig(PolicyGradientConfig):
    """Group-normalised advantages; the KL (k3 estimator) as a loss term."""

    kl_placement: ClassVar[str] = "loss"

    std_eps: float = setting(1e-4, "added to a group's score std before dividing (a tied group gets advantage 0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.std_eps > 0, "std_eps", f"must be > 0, got {self.std_eps}")
