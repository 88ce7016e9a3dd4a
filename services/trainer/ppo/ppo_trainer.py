"""PPO for a causal LM against a reward function, with a KL penalty to a frozen
reference and corrections mixed in as an SFT loss (PPO-ptx).

One :meth:`PPOTrainer.step` is:

1. ``rollout``: sample a response per prompt; record old log-probs, values
   (one pass of the policy) and reference log-probs (one pass of the frozen copy).
2. ``score``: call the reward function on the decoded text.
3. ``compute_advantages``: per-token rewards -beta*KL with the score on the
   last token, GAE, whitening.
4. ``update``: ``ppo_epochs`` passes over shuffled minibatches of clipped policy
   loss + vf_coef * clipped value loss (+ ptx_coef * SFT loss on demonstrations).
5. The adaptive controller moves beta toward ``target_kl``.

The reward function is any ``(prompts, responses) -> scores`` callable: in
production an adapter over RewardService.ScoreBatch, in tests a Python rule.

With a process group (:meth:`PPOTrainer.enable_data_parallel`, under
torchrun) the step runs data-parallel: services.trainer.ppo.ppo_parallel says
how; without one (the default) nothing here communicates.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from services.trainer.parallel.group import DataParallel
from services.trainer.ppo import ppo_math as pm
from services.trainer.ppo import ppo_parallel
from services.trainer.ppo.ppo_checkpoint import atomic_dir, load_optimizer, save_optimizer, save_served_policy
from services.trainer.ppo.ppo_config import PPOConfig
from services.trainer.ppo.ppo_model import CausalLM, PolicyWithValue, disable_dropout, response_logits
from services.trainer.ppo.ppo_rollout import (
    DemonstrationBatch,
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
from services.trainer.ppo.reward_normalizer import RunningMoments

RewardFn = Callable[[list[str], list[str]], Sequence[float]]

VALUE_HEAD_FILE = "value_head.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"


@dataclass
class PPOStats:
    """What one PPO step did; ``kl`` is nats per response (k1, summed over tokens)."""

    step: int
    mean_score: float  # reward function's score, before KL penalty
    mean_reward: float  # score + per-token KL penalty, summed over the response
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


@dataclass
class Advantages:
    advantages: Tensor
    returns: Tensor
    rewards: Tensor  # per-token, after the KL penalty
    kl: Tensor  # per-token k1 KL, for the statistics and the controller


class PPOTrainer:
    """Owns the policy (with value head), the frozen reference, the optimizer
    and the KL controller. Not thread-safe: one step at a time."""

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
        self.config = config = config or PPOConfig()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs both a pad and an eos token for batched rollouts")
        # generate() samples from torch's global generator (it takes no
        # generator argument), so the seed is global; checkpoints save its state.
        torch.manual_seed(config.seed)
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        disable_dropout(lm)
        lm.eval()  # eval() only switches off dropout-like layers; gradients still flow
        self.reference: CausalLM = reference if reference is not None else copy.deepcopy(lm)
        self.reference.requires_grad_(False).eval()
        disable_dropout(self.reference)
        self.model = PolicyWithValue(lm)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.learning_rate,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.kl_controller: pm.AdaptiveKLController | pm.FixedKLController = (
            pm.AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
            if config.adaptive_kl
            else pm.FixedKLController(config.init_kl_coef)
        )
        self.score_moments = RunningMoments()
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        self._ptx_cursor = 0
        self.parallel: DataParallel | None = None

    def enable_data_parallel(self, group: DataParallel) -> None:
        """Run every later step data-parallel over ``group`` (every rank calls it, on
        trainers in the same state: see services.trainer.parallel.coordinator)."""
        cfg = self.config
        if cfg.mini_batch_size < group.world_size:
            raise ValueError(
                f"--ppo-mini-batch-size ({cfg.mini_batch_size}) must be at least the number of ranks "
                f"({group.world_size}): every rank takes part of every minibatch"
            )
        if cfg.normalize_scores:
            # Each rank scores only its shard, so the ranks' running moments would drift apart.
            raise ValueError("--ppo-normalize-scores is not supported data-parallel (under torchrun) yet")
        self.parallel = group

    @property
    def policy(self) -> CausalLM:
        return self.model.lm

    @property
    def prompts_per_step(self) -> int:
        """Prompts one :meth:`step` takes (each sampled ``samples_per_prompt`` times)."""
        return self.config.prompts_per_step

    @property
    def warming_up_value(self) -> bool:
        """True during the first ``value_warmup_steps`` steps: only the value head learns."""
        return self.step_count < self.config.value_warmup_steps

    # --- 1. rollout ---------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: Sequence[str]) -> Rollout:
        cfg, tok = self.config, self.tokenizer
        query_ids, query_mask = tokenize_prompts(tok, prompts, cfg.max_prompt_length)
        response_ids = sample_responses(
            self.policy, query_ids, query_mask,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        response_mask, ended = mask_after_eos(response_ids, tok.eos_token_id)
        logits, values = self.model.forward_response(query_ids, query_mask, response_ids, response_mask)
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

    # --- 2. score -------------------------------------------------------------
    def score(self, rollout: Rollout) -> Tensor:
        """Scores (B,) from the reward function, with the configured clip, normalisation
        (by the running moments, which this batch updates first) and EOS penalty."""
        scores = score_rollout(self.reward_fn, rollout)
        if self.config.score_clip:
            scores = scores.clamp(-self.config.score_clip, self.config.score_clip)
        if self.config.normalize_scores:
            self.score_moments.update(scores.tolist())
            scores = torch.tensor(self.score_moments.normalize(scores.tolist()), dtype=torch.float32)
        if self.config.missing_eos_penalty:
            scores = scores - self.config.missing_eos_penalty * (~rollout.ended_with_eos).float()
        return scores

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
        """``ppo_epochs`` x ``num_mini_batches`` optimizer steps; returns mean losses."""
        cfg = self.config
        sums: dict[str, float] = {}
        n_updates = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(rollout), generator=self.shuffle_generator)
            for index in order.split(cfg.mini_batch_size):
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
                ptx, ptx_share = self._ptx_loss(demonstrations) if not warmup else (None, 0.0)
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

    def _ptx_loss(self, demonstrations: Sequence[tuple[str, str]] | None) -> tuple[Tensor | None, float]:
        """SFT loss on the next ``ptx_batch_size`` demonstrations, cycling through them, and its
        scale (1 in one process; with a process group, this rank's part of the picked ones)."""
        if not demonstrations or self.config.ptx_coef == 0:
            return None, 0.0
        n = min(self.config.ptx_batch_size, len(demonstrations))
        picked = [demonstrations[(self._ptx_cursor + i) % len(demonstrations)] for i in range(n)]
        self._ptx_cursor = (self._ptx_cursor + n) % len(demonstrations)
        batch = demonstration_batch(self.tokenizer, picked, self.config.max_prompt_length, self.config.max_new_tokens)
        if self.parallel is None:
            return demonstration_loss(self.policy, batch), 1.0
        rows, share = ppo_parallel.my_rows(self.parallel, torch.arange(n), batch.labels[:, 1:] != -100)
        if len(rows) == 0:
            return None, 0.0
        mine = DemonstrationBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.labels[rows])
        return demonstration_loss(self.policy, mine), share

    # --- the whole step -------------------------------------------------------
    def step(self, prompts: Sequence[str], demonstrations: Sequence[tuple[str, str]] | None = None) -> PPOStats:
        """One PPO iteration on ``prompts`` (len == prompts_per_step, each sampled
        samples_per_prompt times: batch_size rollouts); ``demonstrations`` are (prompt,
        better response) pairs trained with the ptx SFT loss. Data-parallel, every rank
        passes the same global ``prompts`` and rolls out its shard of them."""
        if len(prompts) != self.prompts_per_step:
            raise ValueError(
                f"step needs {self.prompts_per_step} prompts (batch_size={self.config.batch_size} / "
                f"samples_per_prompt={self.config.samples_per_prompt}), got {len(prompts)}"
            )
        prompts = repeat_prompts(prompts, self.config.samples_per_prompt)
        start = time.perf_counter()
        if self.parallel is None:
            rollout = self.rollout(prompts)
            scores = self.score(rollout)
        else:
            torch.manual_seed(ppo_parallel.rollout_seed(self.config.seed, self.step_count, self.parallel.rank))
            rollout = self.rollout(list(prompts)[self.parallel.shard(len(prompts))])
            scores = ppo_parallel.score_together(self.parallel, self.score, rollout)
        return self.learn(rollout, scores, demonstrations, started=start)

    def learn(
        self,
        rollout: Rollout,
        scores: Tensor,
        demonstrations: Sequence[tuple[str, str]] | None = None,
        *,
        started: float | None = None,
    ) -> PPOStats:
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
        stats = PPOStats(
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

    # --- saving ---------------------------------------------------------------
    def save_policy(self, out_dir: str | Path) -> Path:
        """The causal LM alone (safetensors + config + tokenizer): what the policy service serves."""
        return save_served_policy(self.policy, self.tokenizer, out_dir)

    def save_value_head(self, path: str | Path) -> None:
        save_file({k: v.contiguous() for k, v in self.model.value_head.state_dict().items()}, str(path))

    def checkpoint(self, out_dir: str | Path) -> Path:
        """Everything needed to resume bit-for-bit: policy, value head, reference,
        optimizer moments, KL coefficient, step count and RNG states. Atomic."""
        with atomic_dir(out_dir) as tmp:
            self.save_policy(tmp / "policy")
            self.reference.save_pretrained(tmp / "reference", safe_serialization=True)
            self.save_value_head(tmp / VALUE_HEAD_FILE)
            save_optimizer(self.optimizer, tmp)
            save_file(
                {"torch": torch.get_rng_state(), "shuffle": self.shuffle_generator.get_state()}, str(tmp / RNG_FILE)
            )
            state = {
                "step_count": self.step_count,
                "kl_coef": self.kl_controller.value,
                "ptx_cursor": self._ptx_cursor,
                "score_moments": self.score_moments.state_dict(),
                "config": asdict(self.config),
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        return Path(out_dir)

    def restore(self, ckpt_dir: str | Path) -> None:
        """Load a :meth:`checkpoint` into this trainer (same architecture)."""
        from transformers import AutoModelForCausalLM

        ckpt = Path(ckpt_dir)
        for module, sub in ((self.policy, "policy"), (self.reference, "reference")):
            saved = AutoModelForCausalLM.from_pretrained(ckpt / sub)  # resolves tied weights for us
            module.load_state_dict(saved.state_dict())
        self.model.value_head.load_state_dict(load_file(str(ckpt / VALUE_HEAD_FILE)))
        load_optimizer(self.optimizer, ckpt)
        rng = load_file(str(ckpt / RNG_FILE))
        torch.set_rng_state(rng["torch"])
        self.shuffle_generator.set_state(rng["shuffle"])
        state = json.loads((ckpt / STATE_FILE).read_text())
        self.step_count = state["step_count"]
        self.kl_controller.value = state["kl_coef"]
        self._ptx_cursor = state["ptx_cursor"]
        if "score_moments" in state:  # absent in checkpoints written before normalisation existed
            self.score_moments.load_state_dict(state["score_moments"])

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path, reward_fn: RewardFn, config: PPOConfig | None = None) -> PPOTrainer:
        """A trainer rebuilt from a checkpoint directory alone (config from it unless given)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ckpt = Path(ckpt_dir)
        if config is None:
            config = PPOConfig(**json.loads((ckpt / STATE_FILE).read_text())["config"])
        lm = AutoModelForCausalLM.from_pretrained(ckpt / "policy")
        trainer = cls(lm, AutoTokenizer.from_pretrained(ckpt / "policy"), reward_fn, config)
        trainer.restore(ckpt)
        return trainer
