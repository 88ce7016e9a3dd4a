"""What the methods that sample and score answers share (PPO, RLOO, GRPO): rollouts,
the reward model's scores, and PPO's clipped surrogate (RLOO and GRPO use it too)."""

from __future__ import annotations

from dataclasses import dataclass

from services.trainer.methods.base_config import MethodConfig
from shared.config import check, setting


@dataclass(frozen=True)
class SampledConfig(MethodConfig):
    """Rollouts of ``samples_per_prompt`` responses for each of ``batch_size`` prompts,
    scored by the reward model; ``mini_batch_size`` divides the step's responses."""

    samples_per_prompt: int = setting(1, "responses sampled per prompt: a step rolls out batch_size * this")

    # --- the clipped surrogate -------------------------------------------
    cliprange: float = setting(0.2, "policy ratio is clipped to [1-cliprange, 1+cliprange]")
    policy_loss_coef: float = setting(
        1.0,
        "weight of the clipped policy loss; 0 leaves only the other terms (ptx: SFT on the corrections), the "
        "ablation that shows what the method itself adds",
    )

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
    max_new_tokens: int = setting(24, "longest response sampled per rollout")
    temperature: float = setting(1.0, "sampling temperature; logprobs are taken at the same temperature")
    top_k: int = setting(0, "sample only from the top k tokens (0 = whole vocabulary, as the methods assume)")
    top_p: float = setting(1.0, "nucleus sampling mass (1.0 = whole vocabulary, as the methods assume)")

    def __post_init__(self) -> None:
        check(self.samples_per_prompt >= 1, "samples_per_prompt", f"must be >= 1, got {self.samples_per_prompt}")
        super().__post_init__()
        check(0 < self.cliprange < 1, "cliprange", f"must be in (0, 1), got {self.cliprange}")
        check(self.policy_loss_coef >= 0, "policy_loss_coef", f"must be >= 0, got {self.policy_loss_coef}")
        check(self.score_clip >= 0, "score_clip", f"must be >= 0 (0 disables), got {self.score_clip}")
        check(self.missing_eos_penalty >= 0, "missing_eos_penalty", f"must be >= 0, got {self.missing_eos_penalty}")
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(self.top_k >= 0, "top_k", f"must be >= 0 (0 disables), got {self.top_k}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")

    @property
    def rollouts_per_step(self) -> int:
        return self.batch_size * self.samples_per_prompt

    @property
    def rows_per_step(self) -> int:
        return self.rollouts_per_step

    @property
    def rows_description(self) -> str:
        return "batch_size * samples_per_prompt"

    @property
    def response_length(self) -> int:
        return self.max_new_tokens
