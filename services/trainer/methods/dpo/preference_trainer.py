"""What DPO and KTO trainers share beyond the base trainer: the step loop over the
judged examples of a data source, and their stats.

A step reads the current examples from the data source given at construction
(``() -> examples``), picks up to ``batch_size`` of them at random, and makes
``epochs`` passes of ``mini_batch_size`` examples, each one optimizer step of
the method's loss plus ``ptx_coef`` times the SFT loss on the users'
corrections (as PPO-ptx). Without examples it is a ptx-only step (SFT on the
corrections), or no update at all when there are no corrections either.

The interface is every method's (services.trainer.methods.registry.PolicyTrainer),
so the online loop's rounds can drive it: ``prompts`` are accepted and ignored: DPO and KTO learn from answers users
judged, not from fresh samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch
from torch import Tensor

from services.trainer.methods.base_trainer import MethodTrainer
from services.trainer.methods.dpo.preference_config import PreferenceConfig

PreferenceConfigT = TypeVar("PreferenceConfigT", bound=PreferenceConfig)
DataSource = Callable[[], Sequence[Any]]

NAN = math.nan


@dataclass
class PreferenceStats:
    """What one DPO or KTO step did. Names follow PolicyUpdateStats where the meaning carries over:
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


class PreferenceTrainer(MethodTrainer[PreferenceConfigT]):
    """Base of DPOTrainer and KTOTrainer: the step over judged examples. Not thread-safe."""

    def __init__(
        self,
        lm: torch.nn.Module,
        tokenizer,
        data_source: DataSource,
        config: PreferenceConfigT | None = None,
        reference: torch.nn.Module | None = None,
    ) -> None:
        """``lm`` is trained in place; ``reference`` (default: a copy of ``lm``) stays frozen."""
        super().__init__(lm, tokenizer, config or self.config_class(), reference)  # type: ignore[arg-type]
        self.data_source = data_source

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

    def _stats(self, means: dict[str, float], available: int, used: int, elapsed: float) -> PreferenceStats:
        return PreferenceStats(
            step=self.step_count - 1,
            method=self.method,
            loss=means.get("loss", NAN),
            policy_loss=means.get("policy_loss", NAN),
            ptx_loss=means.get("ptx_loss", NAN),
            kl=means.get("kl", NAN),
            kl_coef=self.config.kl_coef,
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
