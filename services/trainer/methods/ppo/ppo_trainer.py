"""PPO for a causal LM against a reward function, with a KL penalty to a frozen
reference and corrections mixed in as an SFT loss (PPO-ptx).

One :meth:`PPOTrainer.step` is:

1. ``rollout``: sample a response per prompt; record old log-probs, values
   (one pass of the policy) and reference log-probs (one pass of the frozen copy).
2. ``score``: call the reward function on the decoded text.
3. ``compute_advantages``: per-token rewards -beta*KL with the score on the
   last token, GAE, whitening.
4. ``update``: ``epochs`` passes over shuffled minibatches of clipped policy
   loss + vf_coef * clipped value loss (+ ptx_coef * SFT loss on demonstrations).
5. The adaptive controller moves beta toward ``target_kl``.

The reward function is any ``(prompts, responses) -> scores`` callable: in
production an adapter over RewardService.ScoreBatch, in tests a Python rule.

With a process group (:meth:`PPOTrainer.enable_data_parallel`, under
torchrun) the step runs data-parallel: services.trainer.methods.ppo.ppo_parallel says
how; without one (the default) nothing here communicates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from services.trainer.methods.ppo import ppo_math as pm
from services.trainer.methods.ppo import ppo_parallel
from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.methods.ppo.ppo_value_model import PolicyWithValue
from services.trainer.methods.rollout import DemonstrationBatch, Rollout, demonstration_loss, repeat_prompts
from services.trainer.methods.sampled_trainer import PolicyUpdateStats, RewardFn, SampledTrainer
from services.trainer.parallel.group import DataParallel
from services.trainer.stop_token import TrainingInterrupted

VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class Advantages:
    advantages: Tensor
    returns: Tensor
    rewards: Tensor  # per-token, after the KL penalty
    kl: Tensor  # per-token k1 KL, for the statistics and the controller


class PPOTrainer(SampledTrainer[PPOConfig]):
    """PPO's own part: the value head, GAE, the KL controller and the data-parallel step.
    Not thread-safe: one step at a time."""

    method = "ppo"
    config_class = PPOConfig
    model: PolicyWithValue

    def __init__(
        self,
        lm: torch.nn.Module,
        tokenizer,
        reward_fn: RewardFn,
        config: PPOConfig | None = None,
        reference: torch.nn.Module | None = None,
    ) -> None:
        """``lm`` is trained in place. ``reference`` is the frozen model the KL
        penalty pulls toward (the SFT model); by default a copy of ``lm``."""
        super().__init__(lm, tokenizer, reward_fn, config, reference)
        cfg = self.config
        self.kl_controller: pm.AdaptiveKLController | pm.FixedKLController = (
            pm.AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
            if cfg.adaptive_kl
            else pm.FixedKLController(cfg.kl_coef)
        )
        self.parallel: DataParallel | None = None

    def _trained_module(self, lm: torch.nn.Module) -> torch.nn.Module:
        return PolicyWithValue(lm)

    def enable_data_parallel(self, group: DataParallel) -> None:
        """Run every later step data-parallel over ``group`` (every rank calls it, on
        trainers in the same state: see services.trainer.parallel.coordinator)."""
        cfg = self.config
        if cfg.mini_batch_size < group.world_size:
            raise ValueError(
                f"--ppo-mini-batch-size ({cfg.mini_batch_size}) must be at least the number of ranks "
                f"({group.world_size}): every rank takes part of every minibatch"
            )
        if cfg.lora_rank:
            # sync_ppo_state broadcasts the reference as a module; a LoRA run's is a view of the policy.
            raise ValueError("--ppo-lora-rank is not supported data-parallel (under torchrun) yet")
        if cfg.normalize_scores:
            # Each rank scores only its shard, so the ranks' running moments would drift apart.
            raise ValueError("--ppo-normalize-scores is not supported data-parallel (under torchrun) yet")
        self.parallel = group

    @property
    def warming_up_value(self) -> bool:
        """True during the first ``value_warmup_steps`` steps: only the value head learns."""
        return self.step_count < self.config.value_warmup_steps

    # --- 1. rollout (SampledTrainer.rollout, with this critic's values) -----------------
    def _logits_and_values(
        self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.model.forward_response(query_ids, query_mask, response_ids, response_mask)

    # --- 2. score: SampledTrainer.score ----------------------------------------------------
    # --- 3. advantages --------------------------------------------------------
    def compute_advantages(self, rollout: Rollout, scores: Tensor) -> Advantages:
        cfg, mask = self.config, rollout.response_mask
        # The penalty uses the configured estimator; the reported KL (and the
        # controller's input) is always k1 summed over tokens, the unbiased one.
        kl_k1 = pm.kl_penalty(rollout.logprobs, rollout.ref_logprobs, "k1") * mask
        kl = kl_k1
        if cfg.kl_estimator != "k1":
            kl = pm.kl_penalty(rollout.logprobs, rollout.ref_logprobs, cfg.kl_estimator) * mask
        rewards = pm.per_token_rewards(scores, kl, mask, self.kl_controller.value)
        if cfg.whiten_rewards:
            rewards = pm.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = pm.compute_gae(rewards, rollout.values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = pm.masked_whiten(advantages, mask)
        return Advantages(advantages=advantages, returns=returns, rewards=rewards, kl=kl_k1)

    # --- 4. update ------------------------------------------------------------
    def update(
        self, rollout: Rollout, adv: Advantages, demonstrations: Sequence[tuple[str, str]] | None = None
    ) -> dict[str, float]:
        """``epochs`` x ``num_mini_batches`` optimizer steps; returns mean losses."""
        cfg = self.config
        sums: dict[str, float] = {}
        n_updates = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(len(rollout), generator=self.shuffle_generator)
            for index in order.split(cfg.mini_batch_size):
                self._agreed_stop_point("update")
                share = 1.0  # this rank's part of the minibatch's token mean (ppo_parallel.my_rows)
                if self.parallel is not None:
                    index, share = ppo_parallel.my_rows(self.parallel, index, rollout.response_mask)
                mb = rollout.select(index)
                width = mb.response_ids.shape[1]
                mb_adv, mb_ret = adv.advantages[index][:, :width], adv.returns[index][:, :width]
                mask = mb.response_mask
                logits, values = self.model.forward_response(mb.query_ids, mb.query_mask, mb.response_ids, mask)
                logits = logits.float() / cfg.temperature
                logprobs = pm.logprobs_from_logits(logits, mb.response_ids)
                pol = pm.clipped_policy_loss(logprobs, mb.logprobs, mb_adv, mask, cfg.cliprange)
                val = pm.clipped_value_loss(values, mb.values, mb_ret, mask, cfg.cliprange_value)
                warmup = self.warming_up_value
                loss = val.loss if warmup else cfg.policy_loss_coef * pol.loss + cfg.vf_coef * val.loss
                ptx, ptx_share = self._ptx_loss_shard(demonstrations) if not warmup else (None, 0.0)
                if self.parallel is not None:
                    loss = share * loss
                if ptx is not None:
                    loss = loss + (cfg.ptx_coef * ptx_share) * ptx
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if warmup:  # value-only: the trunk and LM head keep their weights
                    for p in self.model.lm.parameters():
                        p.grad = None
                if self.parallel is not None:
                    self.parallel.average_gradients(self.model.parameters())
                grad_norm = math.nan
                if cfg.max_grad_norm:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm))
                self.optimizer.step()
                with torch.no_grad():
                    entropy = pm.masked_mean(pm.entropy_from_logits(logits), mask)
                stats = {
                    "policy_loss": float(pol.loss.detach()), "value_loss": float(val.loss.detach()),
                    "clipfrac": float(pol.clipfrac), "value_clipfrac": float(val.clipfrac),
                    "approx_kl": float(pol.approx_kl), "entropy": float(entropy),
                    "ptx_loss": float(ptx.detach()) if ptx is not None else math.nan,
                }  # fmt: skip
                if self.parallel is not None:
                    with_ptx = bool(demonstrations) and cfg.ptx_coef != 0
                    stats = ppo_parallel.global_stats(self.parallel, stats, share, ptx_share, with_ptx)
                stats["grad_norm"] = grad_norm  # after average_gradients: the same on every rank
                for name, value in stats.items():
                    sums[name] = sums.get(name, 0.0) + value
                n_updates += 1
        return {k: v / n_updates for k, v in sums.items()}

    def _ptx_loss_shard(self, demonstrations: Sequence[tuple[str, str]] | None) -> tuple[Tensor | None, float]:
        """The ptx loss (MethodTrainer._ptx_loss) and its scale: 1 in one process; with a
        process group, this rank's part of the picked demonstrations and its share."""
        if self.parallel is None:
            loss = self._ptx_loss(demonstrations)
            return loss, 1.0 if loss is not None else 0.0
        batch = self._next_demonstrations(demonstrations)
        if batch is None:
            return None, 0.0
        rows, share = ppo_parallel.my_rows(self.parallel, torch.arange(len(batch.labels)), batch.labels[:, 1:] != -100)
        if len(rows) == 0:
            return None, 0.0
        mine = DemonstrationBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.labels[rows])
        return demonstration_loss(self.policy, mine), share

    # --- the whole step -------------------------------------------------------
    def step(
        self, prompts: Sequence[str], demonstrations: Sequence[tuple[str, str]] | None = None
    ) -> PolicyUpdateStats:
        """One PPO iteration on ``prompts`` (len == batch_size, each sampled
        samples_per_prompt times: rollouts_per_step rollouts); ``demonstrations`` are (prompt,
        better response) pairs trained with the ptx SFT loss. Data-parallel, every rank
        passes the same global ``prompts`` and rolls out its shard of them."""
        if len(prompts) != self.prompts_per_step:
            raise ValueError(
                f"step needs batch_size={self.config.batch_size} prompts (each sampled "
                f"samples_per_prompt={self.config.samples_per_prompt} times), got {len(prompts)}"
            )
        prompts = repeat_prompts(prompts, self.config.samples_per_prompt)
        start = time.perf_counter()
        if self.parallel is None:
            rollout = self.rollout(prompts)
            scores = self.score(rollout)
        else:
            torch.manual_seed(ppo_parallel.rollout_seed(self.config.seed, self.step_count, self.parallel.rank))
            rollout = self.rollout(list(prompts)[self.parallel.shard(len(prompts))])
            self._agreed_stop_point("rollout")
            scores = ppo_parallel.score_together(self.parallel, self.score, rollout)
        return self.learn(rollout, scores, demonstrations, started=start)

    def _agreed_stop_point(self, phase: str) -> None:
        """Data-parallel, leave the step here when rank 0's stop token is set, on every rank at once
        (a rank that left alone would leave the others waiting in a collective). One process never
        stops here: services.trainer.loop.policy_round watches its forward passes instead."""
        if self.parallel is not None and self.parallel.main_says(self.stop_token.is_set()):
            raise TrainingInterrupted(f"data-parallel PPO step {self.step_count + 1} ({phase})")

    def learn(
        self,
        rollout: Rollout,
        scores: Tensor,
        demonstrations: Sequence[tuple[str, str]] | None = None,
        *,
        started: float | None = None,
    ) -> PolicyUpdateStats:
        """Advantages, the PPO update and the KL controller on a scored rollout (steps 3-5).
        Data-parallel, ``rollout`` and ``scores`` are this rank's shard; they are gathered first."""
        start = time.perf_counter() if started is None else started
        if self.parallel is not None:
            rollout, scores = ppo_parallel.gather_rollout(self.parallel, rollout, scores, self.tokenizer.pad_token_id)
        adv = self.compute_advantages(rollout, scores)
        rollout_done = time.perf_counter()
        losses = self.update(rollout, adv, demonstrations)
        end = time.perf_counter()
        mask = rollout.response_mask.float()
        kl_per_response = float(adv.kl.sum(1).mean())
        stats = PolicyUpdateStats(
            step=self.step_count,
            mean_score=float(scores.mean()),
            mean_reward=float(adv.rewards.sum(1).mean()),
            kl=kl_per_response,
            kl_coef=self.kl_controller.value,
            response_length=float(mask.sum(1).mean()),
            samples_per_s=len(rollout) / (end - start),
            rollout_s=rollout_done - start,
            update_s=end - rollout_done,
            **losses,
        )
        self.kl_controller.update(kl_per_response, len(rollout))
        self.step_count += 1
        return stats

    # --- the value head in checkpoints ------------------------------------------------
    def save_value_head(self, path: str | Path) -> None:
        save_file({k: v.contiguous() for k, v in self.model.value_head.state_dict().items()}, str(path))

    def _save_extra(self, ckpt_dir: Path) -> None:
        self.save_value_head(ckpt_dir / VALUE_HEAD_FILE)

    def _load_extra(self, ckpt_dir: Path) -> None:
        self.model.value_head.load_state_dict(load_file(str(ckpt_dir / VALUE_HEAD_FILE)))

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "kl_coef": self.kl_controller.value}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self.kl_controller.value = state["kl_coef"]
