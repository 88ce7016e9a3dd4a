"""RLOO (Ahmadian et al. 2024): each response's advantage is its KL-penalised reward
minus the mean of the other k - 1 responses' to the same prompt."""

from __future__ import annotations

from torch import Tensor

from services.trainer.methods.policy_gradient import pg_math
from services.trainer.methods.policy_gradient.pg_trainer import PolicyGradientTrainer
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig


class RLOOTrainer(PolicyGradientTrainer[RLOOConfig]):
    """REINFORCE Leave-One-Out on score - kl_coef * KL per sequence."""

    method = "rloo"
    config_class = RLOOConfig

    def group_advantages(self, scores: Tensor, rewards: Tensor) -> Tensor:
        return pg_math.rloo_advantages(rewards, self.config.samples_per_prompt)
