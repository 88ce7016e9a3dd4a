"""What RLOO and GRPO share: k samples per prompt, one advantage per response from
its prompt's group, PPO's clipped surrogate, no critic.

One :meth:`PolicyGradientTrainer.step` on ``batch_size`` prompts is:

1. ``rollout``: sample ``samples_per_prompt`` (k) responses per prompt; record
   old log-probs (the policy) and reference log-probs (the frozen copy)
   (services.trainer.methods.sampled_trainer).
2. ``score``: the reward function on the decoded text, clipped, optionally
   normalised by the running mean/std of scores, minus the EOS penalty.
3. ``advantages``: the method's own (rloo_trainer: leave-one-out on
   score - kl_coef * KL; grpo_trainer: (r - mean) / (std + eps)).
4. ``update``: ``epochs`` passes of PPO's clipped surrogate over shuffled
   minibatches (+ kl_coef * k3 KL for GRPO, + ptx_coef * SFT loss on demonstrations).

It reports PolicyUpdateStats (value fields NaN: there is no value head) and runs
in one process (no data-parallel mode yet).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor

from services.trainer.methods.model import response_logits
from services.trainer.methods.policy_gradient import pg_math
from services.trainer.methods.policy_gradient.pg_config import PolicyGradientConfig
from services.trainer.methods.ppo import ppo_math as pm
from services.trainer.methods.rollout import Rollout, repeat_prompts
from services.trainer.methods.sampled_trainer import PolicyUpdateStats, SampledTrainer

PolicyGradientConfigT = TypeVar("PolicyGradientConfigT", bound=PolicyGradientConfig)


class PolicyGradientTrainer(SampledTrainer[PolicyGradientConfigT]):
    """The step and update of RLOO and GRPO; a subclass gives the advantages. Not thread-safe."""

    # --- 1. rollout: SampledTrainer.rollout, no critic --------------------------------------
    def _logits_and_values(
        self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        logits = response_logits(self.policy, query_ids, query_mask, response_ids, response_mask)
        return logits, torch.zeros(response_ids.shape, dtype=torch.float32)

    # --- 3. advantages (the method's) --------------------------------------------------------
    def group_advantages(self, scores: Tensor, rewards: Tensor) -> Tensor:
        """One advantage per response from its prompt's group of k (consecutive rows)."""
        raise NotImplementedError

    def advantages(self, rollout: Rollout, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(advantage per response, reward per response = score - kl_coef * KL, KL per response)."""
        seq_kl = pg_math.sequence_kl(rollout.logprobs, rollout.ref_logprobs, rollout.response_mask)
        rewards = pg_math.kl_penalized_scores(scores, seq_kl, self.config.kl_coef)
        return self.group_advantages(scores, rewards), rewards, seq_kl

    # --- 4. update ---------------------------------------------------------------------------
    def update(
        self, rollout: Rollout, advantages: Tensor, demonstrations: Sequence[tuple[str, str]] | None = None
    ) -> dict[str, float]:
        """``epochs`` x ``num_mini_batches`` optimizer steps; returns mean losses."""
        cfg = self.config
        token_adv = pg_math.token_advantages(advantages, rollout.response_mask)
        sums: dict[str, float] = {}
        n_updates = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(len(rollout), generator=self.shuffle_generator)
            for index in order.split(cfg.mini_batch_size):
                mb = rollout.select(index)
                mask = mb.response_mask
                logits = response_logits(self.policy, mb.query_ids, mb.query_mask, mb.response_ids, mask)
                logits = logits.float() / cfg.temperature
                logprobs = pm.logprobs_from_logits(logits, mb.response_ids)
                mb_adv = token_adv[index][:, : mask.shape[1]]
                pol = pm.clipped_policy_loss(logprobs, mb.logprobs, mb_adv, mask, cfg.cliprange)
                loss = cfg.policy_loss_coef * pol.loss
                kl_term = pg_math.kl_loss(logprobs, mb.ref_logprobs, mask)
                if cfg.kl_placement == "loss" and cfg.kl_coef:
                    loss = loss + cfg.kl_coef * kl_term
                ptx = self._ptx_loss(demonstrations)
                if ptx is not None:
                    loss = loss + cfg.ptx_coef * ptx
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = math.nan
                if cfg.max_grad_norm:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm))
                self.optimizer.step()
                with torch.no_grad():
                    entropy = pm.masked_mean(pm.entropy_from_logits(logits), mask)
                stats = {
                    "policy_loss": float(pol.loss.detach()), "clipfrac": float(pol.clipfrac),
                    "approx_kl": float(pol.approx_kl), "entropy": float(entropy), "kl_loss": float(kl_term.detach()),
                    "ptx_loss": float(ptx.detach()) if ptx is not None else math.nan, "grad_norm": grad_norm,
                }  # fmt: skip
                for name, value in stats.items():
                    sums[name] = sums.get(name, 0.0) + value
                n_updates += 1
        return {k: v / n_updates for k, v in sums.items()}

    # --- the whole step ----------------------------------------------------------------------
    def step(
        self, prompts: Sequence[str], demonstrations: Sequence[tuple[str, str]] | None = None
    ) -> PolicyUpdateStats:
        """One iteration on ``prompts`` (len == batch_size), each sampled k times;
        ``demonstrations`` are (prompt, better response) pairs for the ptx SFT loss."""
        if len(prompts) != self.config.batch_size:
            raise ValueError(f"step needs batch_size={self.config.batch_size} prompts, got {len(prompts)}")
        start = time.perf_counter()
        rollout = self.rollout(repeat_prompts(prompts, self.config.samples_per_prompt))
        scores = self.score(rollout)
        advantages, rewards, seq_kl = self.advantages(rollout, scores)
        rollout_done = time.perf_counter()
        losses = self.update(rollout, advantages, demonstrations)
        end = time.perf_counter()
        stats = PolicyUpdateStats(
            step=self.step_count,
            mean_score=float(scores.mean()),
            mean_reward=float(rewards.mean()),
            kl=float(seq_kl.mean()),
            kl_coef=self.config.kl_coef,
            policy_loss=losses["policy_loss"],
            value_loss=math.nan,  # no critic
            clipfrac=losses["clipfrac"],
            value_clipfrac=math.nan,
            entropy=losses["entropy"],
            approx_kl=losses["approx_kl"],
            ptx_loss=losses["ptx_loss"],
            response_length=float(rollout.response_mask.float().sum(1).mean()),
            samples_per_s=len(rollout) / (end - start),
            rollout_s=rollout_done - start,
            update_s=end - rollout_done,
            grad_norm=losses["grad_norm"],
        )
        self.step_count += 1
        return stats
