"""What DPO and KTO trainers share: the policy, its frozen reference, AdamW,
the step loop with PPO-ptx, stats, and checkpoints without pickle.

A step reads the current examples from the data source given at construction
(``() -> examples``), picks up to ``batch_size`` of them at random, and makes
``epochs`` passes of ``mini_batch_size`` examples, each one optimizer step of
the method's loss plus ``ptx_coef`` times the SFT loss on the users'
corrections (as PPO-ptx). Without examples it is a ptx-only step (SFT on the
corrections), or no update at all when there are no corrections either.

The interface is PPOTrainer's, so the online loop's rounds can drive either:
``step(prompts, demonstrations) -> stats``, ``policy``, ``reference``,
``tokenizer``, ``step_count``, ``save_policy``, ``checkpoint``/``restore``.
``prompts`` are accepted and ignored: DPO and KTO learn from answers users
judged, not from fresh samples.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from services.trainer.dpo.dpo_config import PreferenceOptimConfig
from services.trainer.ppo.ppo_checkpoint import atomic_dir, load_optimizer, save_optimizer, save_served_policy
from services.trainer.ppo.ppo_model import CausalLM, disable_dropout
from services.trainer.ppo.ppo_rollout import demonstration_batch, demonstration_loss
from services.trainer.ppo.ppo_trainer import RNG_FILE, STATE_FILE

NAN = math.nan


@dataclass
class PreferenceStats:
    """What one DPO or KTO step did. Names follow PPOStats where the meaning carries over:
    ``kl_coef`` is beta; ``mean_score`` the mean implicit reward (beta log pi/pi_ref) of the
    preferred (DPO: chosen; KTO: desirable) responses, the quantity the method raises;
    ``kl`` an estimate of KL(pi || pi_ref) in nats per response (DPO: mean log-ratio over the
    batch's logged responses; KTO: its reference point z0). NaN where a step had nothing to measure."""

    step: int
    method: str
    loss: float  # the method's loss plus ptx_coef * ptx_loss
    policy_loss: float  # the DPO / KTO loss alone
    ptx_loss: float
    kl: float
    kl_coef: float
    mean_score: float
    reward_chosen: float  # mean implicit reward of chosen (DPO) / desirable (KTO) responses
    reward_rejected: float  # ... of rejected / undesirable ones
    reward_margin: float  # reward_chosen - reward_rejected
    accuracy: float  # DPO: share of pairs ranked right; KTO: share on their label's side of z0
    grad_norm: float  # before clipping
    learning_rate: float
    examples_available: int  # what the data source held this step
    examples_used: int
    samples_per_s: float
    update_s: float

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self) if f.name != "method"}


class PreferenceTrainer:
    """Base of DPOTrainer and KTOTrainer. Not thread-safe: one step at a time."""

    method: ClassVar[str] = ""

    def __init__(
        self,
        lm: torch.nn.Module,
        tokenizer,
        data_source: Callable[[], Sequence[Any]],
        config: PreferenceOptimConfig,
        reference: torch.nn.Module | None = None,
    ) -> None:
        """``lm`` is trained in place; ``reference`` (default: a copy of ``lm``) stays frozen."""
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs both a pad and an eos token for batched training")
        self.tokenizer = tokenizer
        self.data_source = data_source
        disable_dropout(lm)
        lm.eval()  # no dropout: the same answer must get the same log-prob in every pass
        self.lm: CausalLM = lm
        self.reference: CausalLM = reference if reference is not None else copy.deepcopy(lm)
        self.reference.requires_grad_(False).eval()
        disable_dropout(self.reference)
        self.optimizer = torch.optim.AdamW(
            [p for p in lm.parameters() if p.requires_grad],
            lr=config.learning_rate,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        self._ptx_cursor = 0

    @property
    def policy(self) -> CausalLM:
        return self.lm

    @property
    def prompts_per_step(self) -> int:
        """What the loop's rounds hand :meth:`step` (the selector's protocol); ignored here."""
        return self.config.batch_size

    # --- the method's part ----------------------------------------------------------
    def minibatch_loss(self, examples: Sequence[Any]) -> tuple[Tensor, dict[str, float]]:
        """The method's loss on ``examples`` and its statistics (PreferenceStats names)."""
        raise NotImplementedError

    # --- the step -------------------------------------------------------------------
    def step(self, prompts: Sequence[str] = (), demonstrations: Sequence[tuple[str, str]] | None = None):
        """One step on the source's current examples; ``demonstrations`` are (prompt, better
        response) pairs for the ptx SFT loss. ``prompts`` is ignored (see the module doc)."""
        start = time.perf_counter()
        examples = list(self.data_source())
        n = min(self.config.batch_size, len(examples))
        picked = torch.randperm(len(examples), generator=self.shuffle_generator)[:n].tolist() if examples else []
        batch = [examples[i] for i in picked]
        sums: dict[str, float] = {}
        n_updates = 0
        for _ in range(self.config.epochs):
            order = torch.randperm(len(batch), generator=self.shuffle_generator) if batch else torch.arange(0)
            chunks = [c.tolist() for c in order.split(self.config.mini_batch_size)] or [[]]
            for chunk in chunks:
                stats = self._optimizer_step([batch[i] for i in chunk], demonstrations)
                if stats is None:
                    continue
                for name, value in stats.items():
                    sums[name] = sums.get(name, 0.0) + value
                n_updates += 1
        elapsed = time.perf_counter() - start
        means = {k: v / n_updates for k, v in sums.items()} if n_updates else {}
        self.step_count += 1
        return self._stats(means, len(examples), len(batch), elapsed)

    def _optimizer_step(
        self, examples: list[Any], demonstrations: Sequence[tuple[str, str]] | None
    ) -> dict[str, float] | None:
        """One AdamW step on the method's loss (+ ptx); None when there is nothing to learn from."""
        cfg = self.config
        ptx = self._ptx_loss(demonstrations)
        if not examples and ptx is None:
            return None
        stats: dict[str, float] = {}
        loss = torch.zeros(())
        if examples:
            method_loss, stats = self.minibatch_loss(examples)
            loss = loss + method_loss
            stats["policy_loss"] = float(method_loss.detach())
        if ptx is not None:
            loss = loss + cfg.ptx_coef * ptx
            stats["ptx_loss"] = float(ptx.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.lm.parameters() if p.grad is not None]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm else math.inf  # inf: measure without clipping
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        stats["loss"] = float(loss.detach())
        return stats

    def _ptx_loss(self, demonstrations: Sequence[tuple[str, str]] | None) -> Tensor | None:
        """SFT loss on the next ``ptx_batch_size`` demonstrations, cycling through them."""
        cfg = self.config
        if not demonstrations or cfg.ptx_coef == 0:
            return None
        n = min(cfg.ptx_batch_size, len(demonstrations))
        picked = [demonstrations[(self._ptx_cursor + i) % len(demonstrations)] for i in range(n)]
        self._ptx_cursor = (self._ptx_cursor + n) % len(demonstrations)
        batch = demonstration_batch(self.tokenizer, picked, cfg.max_prompt_length, cfg.max_response_length)
        return demonstration_loss(self.lm, batch)

    def _stats(self, means: dict[str, float], available: int, used: int, elapsed: float) -> PreferenceStats:
        beta = float(getattr(self.config, "beta", NAN))
        return PreferenceStats(
            step=self.step_count - 1,
            method=self.method,
            loss=means.get("loss", NAN),
            policy_loss=means.get("policy_loss", NAN),
            ptx_loss=means.get("ptx_loss", NAN),
            kl=means.get("kl", NAN),
            kl_coef=beta,
            mean_score=means.get("reward_chosen", NAN),
            reward_chosen=means.get("reward_chosen", NAN),
            reward_rejected=means.get("reward_rejected", NAN),
            reward_margin=means.get("reward_margin", NAN),
            accuracy=means.get("accuracy", NAN),
            grad_norm=means.get("grad_norm", NAN),
            learning_rate=float(self.optimizer.param_groups[0]["lr"]),
            examples_available=available,
            examples_used=used,
            samples_per_s=used * self.config.epochs / elapsed if elapsed > 0 else 0.0,
            update_s=elapsed,
        )

    # --- saving -----------------------------------------------------------------------
    def save_policy(self, out_dir: str | Path) -> Path:
        """The causal LM alone (safetensors + config + tokenizer): what the policy service serves."""
        return save_served_policy(self.lm, self.tokenizer, out_dir)

    def checkpoint(self, out_dir: str | Path) -> Path:
        """Policy, reference, optimizer moments, step count, ptx cursor and RNG states. Atomic."""
        with atomic_dir(out_dir) as tmp:
            self.save_policy(tmp / "policy")
            self.reference.save_pretrained(tmp / "reference", safe_serialization=True)
            save_optimizer(self.optimizer, tmp)
            save_file(
                {"torch": torch.get_rng_state(), "shuffle": self.shuffle_generator.get_state()}, str(tmp / RNG_FILE)
            )
            state = {
                "method": self.method,
                "step_count": self.step_count,
                "ptx_cursor": self._ptx_cursor,
                "config": asdict(self.config),
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        return Path(out_dir)

    def restore(self, ckpt_dir: str | Path) -> None:
        """Load a :meth:`checkpoint` of the same method into this trainer (same architecture)."""
        from transformers import AutoModelForCausalLM

        ckpt = Path(ckpt_dir)
        state = read_state(ckpt)
        if state.get("method") != self.method:
            raise ValueError(
                f"{ckpt / STATE_FILE}: a {state.get('method') or 'PPO'} checkpoint cannot resume a {self.method} "
                "trainer; delete it (the round restarts from the current policy version) or switch the method back"
            )
        for module, sub in ((self.lm, "policy"), (self.reference, "reference")):
            saved = AutoModelForCausalLM.from_pretrained(ckpt / sub)  # resolves tied weights
            module.load_state_dict(saved.state_dict())
        load_optimizer(self.optimizer, ckpt)
        rng = load_file(str(ckpt / RNG_FILE))
        torch.set_rng_state(rng["torch"])
        self.shuffle_generator.set_state(rng["shuffle"])
        self.step_count = state["step_count"]
        self._ptx_cursor = state["ptx_cursor"]


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json, with an error naming the file when it is missing or bad."""
    path = Path(ckpt_dir) / STATE_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable trainer checkpoint state ({exc})") from exc
