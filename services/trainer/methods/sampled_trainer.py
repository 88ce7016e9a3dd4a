"""What the methods that sample and score share (PPO, RLOO, GRPO): the reward
function, rollouts with old and reference log-probs, and the scores' clip,
running normalisation (kept in the checkpoint) and EOS penalty.

The reward function is any ``(prompts, responses) -> scores`` callable: in
production an adapter over RewardService.ScoreBatch, in tests a Python rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from services.trainer.methods.base_trainer import MethodTrainer
from services.trainer.methods.model import response_logits
from services.trainer.methods.ppo import ppo_math as pm
from services.trainer.methods.reward_normalizer import RunningMoments
from services.trainer.methods.rollout import (
    Rollout,
    decode_responses,
    mask_after_eos,
    sample_responses,
    score_rollout,
    tokenize_prompts,
)
from services.trainer.methods.sampled_config import SampledConfig

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
SampledConfigT = TypeVar("SampledConfigT", bound=SampledConfig)


@dataclass
class PolicyUpdateStats:
    """What one step of a sampling method did; ``kl`` is nats per response (k1, summed over
    tokens). Fields a method lacks are NaN (RLOO and GRPO: no value head)."""

    step: int
    mean_score: float  # reward function's score, before KL penalty
    mean_reward: float  # score + KL penalty, summed over the response
    kl: float
    kl_coef: float
    policy_loss: float
    value_loss: float
    clipfrac: float
    value_clipfrac: float
    entropy: float
    approx_kl: float
    ptx_loss: float  # NaN when no demonstrations were given
    response_length: float
    samples_per_s: float
    rollout_s: float
    update_s: float
    grad_norm: float = math.nan  # global gradient norm before clipping (NaN when clipping is off)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class SampledTrainer(MethodTrainer[SampledConfigT]):
    """A policy trainer that samples responses and scores them with ``reward_fn``."""

    def __init__(
        self,
        lm: torch.nn.Module,
        tokenizer,
        reward_fn: RewardFn,
        config: SampledConfigT | None = None,
        reference: torch.nn.Module | None = None,
    ) -> None:
        super().__init__(lm, tokenizer, config or self.config_class(), reference)  # type: ignore[arg-type]
        self.reward_fn = reward_fn
        self.score_moments = RunningMoments()

    # --- the method's part ----------------------------------------------------------------
    def _logits_and_values(
        self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The policy's logits over the response and the critic's values (zeros without one)."""
        raise NotImplementedError

    # --- rollout ----------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: Sequence[str]) -> Rollout:
        """One sampled response per prompt (repeat a prompt for several), with the old log-probs,
        values and reference log-probs the update needs."""
        cfg, tok = self.config, self.tokenizer
        query_ids, query_mask = tokenize_prompts(tok, prompts, cfg.max_prompt_length)
        response_ids = sample_responses(
            self.policy, query_ids, query_mask,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        response_mask, ended = mask_after_eos(response_ids, tok.eos_token_id)
        logits, values = self._logits_and_values(query_ids, query_mask, response_ids, response_mask)
        logprobs = pm.logprobs_from_logits(logits / cfg.temperature, response_ids)
        ref_logits = response_logits(self.reference, query_ids, query_mask, response_ids, response_mask)
        ref_logprobs = pm.logprobs_from_logits(ref_logits / cfg.temperature, response_ids)
        maskf = response_mask.float()
        return Rollout(
            prompts=list(prompts),
            responses=decode_responses(tok, response_ids, response_mask, tok.eos_token_id),
            query_ids=query_ids, query_mask=query_mask,
            response_ids=response_ids, response_mask=response_mask, ended_with_eos=ended,
            logprobs=logprobs * maskf, ref_logprobs=ref_logprobs * maskf, values=values * maskf,
        )  # fmt: skip

    # --- score ------------------------------------------------------------------------------
    def score(self, rollout: Rollout) -> Tensor:
        """Scores (B,) from the reward function, with the configured clip, normalisation
        (by the running moments, which this batch updates first) and EOS penalty."""
        cfg = self.config
        scores = score_rollout(self.reward_fn, rollout)
        if cfg.score_clip:
            scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
        if cfg.normalize_scores:
            self.score_moments.update(scores.tolist())
            scores = torch.tensor(self.score_moments.normalize(scores.tolist()), dtype=torch.float32)
        if cfg.missing_eos_penalty:
            scores = scores - cfg.missing_eos_penalty * (~rollout.ended_with_eos).float()
        return scores

    # --- checkpoint -------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"score_moments": self.score_moments.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if "score_moments" in state:  # absent in checkpoints written before normalisation existed
            self.score_moments.load_state_dict(state["score_moments"])
