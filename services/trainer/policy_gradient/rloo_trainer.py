"""RLOO and GRPO for a causal LM against a reward function: no critic, k samples per prompt.

One :meth:`PolicyGradientTrainer.step` on ``batch_size`` prompts is:

1. ``rollout``: sample ``samples_per_prompt`` (k) responses per prompt; record
   old log-probs (the policy) and reference log-probs (the frozen copy).
2. ``score``: the reward function on the decoded text, clipped, optionally
   normalised by the running mean/std of scores, minus the EOS penalty.
3. ``advantages``: one per response from its prompt's group: RLOO's
   leave-one-out on score - beta * KL, or GRPO's (r - mean) / (std + eps).
4. ``update``: ``num_epochs`` passes of PPO's clipped surrogate over shuffled
   minibatches (+ beta * k3 KL for GRPO, + ptx_coef * SFT loss on demonstrations).

It reuses PPO's rollout, KL, surrogate and checkpoint pieces
(services.trainer.ppo) and reports the same :class:`PPOStats` (value fields NaN:
there is no value head). It runs in one process (no data-parallel mode yet).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from services.trainer.policy_gradient import pg_math
from services.trainer.policy_gradient.rloo_config import GRPOConfig, PolicyGradientConfig, RLOOConfig
from services.trainer.ppo import ppo_math as pm
from services.trainer.ppo.ppo_checkpoint import atomic_dir, load_optimizer, save_optimizer, save_served_policy
from services.trainer.ppo.ppo_model import CausalLM, disable_dropout, response_logits
from services.trainer.ppo.ppo_rollout import (
    Rollout,
    decode_responses,
    demonstration_batch,
    demonstration_loss,
    mask_after_eos,
    repeat_prompts,
    sample_responses,
    score_rollout,
    tokenize_prompts,
)
from services.trainer.ppo.ppo_trainer import RNG_FILE, STATE_FILE, PPOStats
from services.trainer.ppo.reward_normalizer import RunningMoments

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
CONFIG_CLASSES: dict[str, type[PolicyGradientConfig]] = {"rloo": RLOOConfig, "grpo": GRPOConfig}


class PolicyGradientTrainer:
    """Owns the policy, the frozen reference, the optimizer and the score normaliser.
    The method (RLOO or GRPO) is the config's class. Not thread-safe."""

    def __init__(
        self,
        lm: torch.nn.Module,
        tokenizer,
        reward_fn: RewardFn,
        config: PolicyGradientConfig | None = None,
        reference: torch.nn.Module | None = None,
    ) -> None:
        """``lm`` is trained in place; ``reference`` (default: a copy of ``lm``) is frozen."""
        self.config = config = config or RLOOConfig()
        self.method = "grpo" if isinstance(config, GRPOConfig) else "rloo"
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs both a pad and an eos token for batched rollouts")
        torch.manual_seed(config.seed)  # generate() samples from the global generator; checkpoints save it
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        disable_dropout(lm)
        lm.eval()
        self.reference: CausalLM = reference if reference is not None else copy.deepcopy(lm)
        self.reference.requires_grad_(False).eval()
        disable_dropout(self.reference)
        self.model: CausalLM = lm
        self.optimizer = torch.optim.AdamW(
            [p for p in lm.parameters() if p.requires_grad],
            lr=config.learning_rate,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.score_moments = RunningMoments()
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        self._ptx_cursor = 0

    @property
    def policy(self) -> CausalLM:
        return self.model

    @property
    def prompts_per_step(self) -> int:
        return self.config.batch_size

    # --- 1. rollout -------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: Sequence[str]) -> Rollout:
        """k responses per prompt, each prompt's group in consecutive rows."""
        cfg, tok = self.config, self.tokenizer
        expanded = repeat_prompts(prompts, cfg.samples_per_prompt)
        query_ids, query_mask = tokenize_prompts(tok, expanded, cfg.max_prompt_length)
        response_ids = sample_responses(
            self.policy, query_ids, query_mask,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        response_mask, ended = mask_after_eos(response_ids, tok.eos_token_id)
        maskf = response_mask.float()
        logits = response_logits(self.policy, query_ids, query_mask, response_ids, response_mask)
        ref_logits = response_logits(self.reference, query_ids, query_mask, response_ids, response_mask)
        return Rollout(
            prompts=expanded,
            responses=decode_responses(tok, response_ids, response_mask, tok.eos_token_id),
            query_ids=query_ids, query_mask=query_mask,
            response_ids=response_ids, response_mask=response_mask, ended_with_eos=ended,
            logprobs=pm.logprobs_from_logits(logits / cfg.temperature, response_ids) * maskf,
            ref_logprobs=pm.logprobs_from_logits(ref_logits / cfg.temperature, response_ids) * maskf,
            values=torch.zeros_like(maskf),  # no critic
        )  # fmt: skip

    # --- 2. score ---------------------------------------------------------------
    def score(self, rollout: Rollout) -> Tensor:
        """Scores (N,): clipped, normalised by the running moments (which this batch
        updates first) when configured, minus the EOS penalty (in the scores' units)."""
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

    # --- 3. advantages -----------------------------------------------------------
    def advantages(self, rollout: Rollout, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(advantage per response, reward per response = score - beta * KL, KL per response)."""
        cfg = self.config
        seq_kl = pg_math.sequence_kl(rollout.logprobs, rollout.ref_logprobs, rollout.response_mask)
        rewards = pg_math.kl_penalized_scores(scores, seq_kl, cfg.kl_coef)
        if isinstance(cfg, GRPOConfig):
            advantages = pg_math.grpo_advantages(scores, cfg.samples_per_prompt, cfg.std_eps)
        else:
            advantages = pg_math.rloo_advantages(rewards, cfg.samples_per_prompt)
        return advantages, rewards, seq_kl

    # --- 4. update ---------------------------------------------------------------
    def update(
        self, rollout: Rollout, advantages: Tensor, demonstrations: Sequence[tuple[str, str]] | None = None
    ) -> dict[str, float]:
        """``num_epochs`` x ``num_mini_batches`` optimizer steps; returns mean losses."""
        cfg = self.config
        token_adv = pg_math.token_advantages(advantages, rollout.response_mask)
        sums: dict[str, float] = {}
        n_updates = 0
        for _ in range(cfg.num_epochs):
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

    def _ptx_loss(self, demonstrations: Sequence[tuple[str, str]] | None) -> Tensor | None:
        """SFT loss on the next ``ptx_batch_size`` demonstrations, cycling through them (as PPO's)."""
        if not demonstrations or self.config.ptx_coef == 0:
            return None
        n = min(self.config.ptx_batch_size, len(demonstrations))
        picked = [demonstrations[(self._ptx_cursor + i) % len(demonstrations)] for i in range(n)]
        self._ptx_cursor = (self._ptx_cursor + n) % len(demonstrations)
        batch = demonstration_batch(self.tokenizer, picked, self.config.max_prompt_length, self.config.max_new_tokens)
        return demonstration_loss(self.policy, batch)

    # --- the whole step ----------------------------------------------------------
    def step(self, prompts: Sequence[str], demonstrations: Sequence[tuple[str, str]] | None = None) -> PPOStats:
        """One iteration on ``prompts`` (len == batch_size), each sampled k times;
        ``demonstrations`` are (prompt, better response) pairs for the ptx SFT loss."""
        if len(prompts) != self.config.batch_size:
            raise ValueError(f"step needs batch_size={self.config.batch_size} prompts, got {len(prompts)}")
        start = time.perf_counter()
        rollout = self.rollout(prompts)
        scores = self.score(rollout)
        advantages, rewards, seq_kl = self.advantages(rollout, scores)
        rollout_done = time.perf_counter()
        losses = self.update(rollout, advantages, demonstrations)
        end = time.perf_counter()
        stats = PPOStats(
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

    # --- saving -------------------------------------------------------------------
    def save_policy(self, out_dir: str | Path) -> Path:
        """The causal LM (safetensors + config + tokenizer): what the policy service serves."""
        return save_served_policy(self.policy, self.tokenizer, out_dir)

    def checkpoint(self, out_dir: str | Path) -> Path:
        """Policy, reference, optimizer moments, score moments, step count and RNG states; atomic."""
        with atomic_dir(out_dir) as tmp:
            self.save_policy(tmp / "policy")
            self.reference.save_pretrained(tmp / "reference", safe_serialization=True)
            save_optimizer(self.optimizer, tmp)
            rng = {"torch": torch.get_rng_state(), "shuffle": self.shuffle_generator.get_state()}
            save_file(rng, str(tmp / RNG_FILE))
            state = {
                "method": self.method,
                "step_count": self.step_count,
                "ptx_cursor": self._ptx_cursor,
                "score_moments": self.score_moments.state_dict(),
                "config": asdict(self.config),
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        return Path(out_dir)

    def restore(self, ckpt_dir: str | Path) -> None:
        """Load a :meth:`checkpoint` of the same method into this trainer."""
        from transformers import AutoModelForCausalLM

        ckpt = Path(ckpt_dir)
        state = json.loads((ckpt / STATE_FILE).read_text())
        if state.get("method") != self.method:
            raise ValueError(f"{ckpt} is a {state.get('method', 'ppo')} checkpoint; this trainer runs {self.method}")
        for module, sub in ((self.policy, "policy"), (self.reference, "reference")):
            module.load_state_dict(AutoModelForCausalLM.from_pretrained(ckpt / sub).state_dict())
        load_optimizer(self.optimizer, ckpt)
        rng = load_file(str(ckpt / RNG_FILE))
        torch.set_rng_state(rng["torch"])
        self.shuffle_generator.set_state(rng["shuffle"])
        self.step_count = state["step_count"]
        self._ptx_cursor = state["ptx_cursor"]
        self.score_moments.load_state_dict(state["score_moments"])

    @classmethod
    def from_checkpoint(
        cls, ckpt_dir: str | Path, reward_fn: RewardFn, config: PolicyGradientConfig | None = None
    ) -> PolicyGradientTrainer:
        """A trainer rebuilt from a checkpoint directory alone (config from it unless given)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ckpt = Path(ckpt_dir)
        if config is None:
            state = json.loads((ckpt / STATE_FILE).read_text())
            config = CONFIG_CLASSES[state["method"]](**state["config"])
        lm = AutoModelForCausalLM.from_pretrained(ckpt / "policy")
        trainer = cls(lm, AutoTokenizer.from_pretrained(ckpt / "policy"), reward_fn, config)
        trainer.restore(ckpt)
        return trainer
