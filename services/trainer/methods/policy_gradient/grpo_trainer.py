"""GRPO (Shao et al. 2024): each response's advantage is its score normalised by its
prompt's group (mean and std); the KL enters the loss, not the reward."""

from __future__ import annotations

from torch import Tensor

from services.trainer.methods.policy_gradient import pg_math
from services.trainer.methods.policy_gradient.grpo_config import GRPOConfig
from services.trainer.methods.policy_gradient.pg_trainer import PolicyGradientTrainer


class GRPOTrainer(PolicyGradientTrainer[GRPOConfig]):
    """Group Relative Policy Optimization: (r - mean r) / (std r + eps) on the raw scores."""

    method = "grpo"
    config_class = GRPOConfig

    def group_advantages(self, scores: Tensor, rewards: Tensor) -> Tensor:
        return pg_math.grpo_advantages(scores, self.config.samples_per_prompt, self.config.std_eps)
