"""What RLOO and GRPO share: k samples per prompt, a clipped surrogate, no critic.

Both methods sample ``samples_per_prompt`` (k) responses for each of
``batch_size`` prompts, score them, and give every response one advantage
computed from its own prompt's group, so no value model is trained. The update
is PPO's clipped surrogate on the rollout's (old) log-probs, ``epochs``
passes, with the PPO-ptx SFT term on corrections. At the defaults a step
generates batch_size * k = 16 responses and makes 4 optimizer updates, as a
default PPO step does (16 rollouts, 2 epochs x 2 minibatches): the methods
compare at equal compute. Each method's class (rloo_config, grpo_config) is
composed into the trainer's config as ``--rloo-<name>`` / ``--grpo-<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from services.trainer.methods.base_config import method_defaults
from services.trainer.methods.sampled_config import SampledConfig
from shared.config import Renamed, check


@dataclass(frozen=True)
@method_defaults(batch_size=4, samples_per_prompt=4, epochs=2)
class PolicyGradientConfig(SampledConfig):
    """k >= 2 samples per prompt: the baseline is the other samples'."""

    renamed: ClassVar[tuple[Renamed, ...]] = (Renamed("num_epochs", "epochs"),)
    # Where the KL to the reference enters: "reward" (r - kl_coef * KL per sequence) or "loss" (+ kl_coef * k3).
    kl_placement: ClassVar[str] = "reward"

    def __post_init__(self) -> None:
        check(
            self.samples_per_prompt >= 2,
            "samples_per_prompt",
            f"must be >= 2 (the baseline is the other samples), got {self.samples_per_prompt}",
        )
        super().__post_init__()
