"""RLOO's settings: REINFORCE Leave-One-Out (Ahmadian et al. 2024).

A_i = r_i - mean_{j != i} r_j, with the KL to the reference folded into the
reward, r_i = score_i - kl_coef * KL_i (one KL per sequence, as TRL's RLOO
does). kl_coef 0.05 is TRL's RLOO default; the paper's k=4 is the default k.
Flags ``--rloo-<name>``, variables ``RLHF_TRAINER_RLOO_<NAME>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from services.trainer.methods.base_config import method_defaults
from services.trainer.methods.policy_gradient.pg_config import PolicyGradientConfig


@dataclass(frozen=True)
@method_defaults(kl_coef=0.05)
class RLOOConfig(PolicyGradientConfig):
    """REINFORCE Leave-One-Out: the KL is part of each sequence's reward."""

    kl_placement: ClassVar[str] = "reward"
