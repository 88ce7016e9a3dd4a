"""Online DPO on the pairs users compared, and KTO on their thumbs, against the
frozen reference (the store's policy v1, as for PPO).

DPO (Rafailov et al. 2023) and KTO (Ethayarajh et al. 2024) need no reward
model and no sampling: they raise the log-prob of the answers users preferred
relative to the reference, and lower the others'. Online here means the
examples are the live ones: the served answers (an app asking for
``num_return_sequences=2`` and letting the user pick) with the most recent
feedback, re-read at every step (services.trainer.data.preference_sets).

The loop picks a method by name (``dpo``, ``kto``) and builds the trainer with
:func:`build_preference_trainer`, its data source with
:func:`preference_data_source`, and resumes with
:func:`preference_trainer_from_checkpoint`; the step loop, ptx, stats and
checkpoints are services.trainer.dpo.preference_base's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from services.trainer.data.preference_sets import PreferencePair, RatedResponse
from services.trainer.dpo import dpo_math as dm
from services.trainer.dpo.dpo_config import DPOConfig, KTOConfig
from services.trainer.dpo.dpo_data import (
    PairSource,
    RatingSource,
    batch_logprobs,
    ledger_pairs,
    ledger_ratings,
    sequence_batch,
)
from services.trainer.dpo.preference_base import PreferenceStats, PreferenceTrainer, read_state

PREFERENCE_METHODS = ("dpo", "kto")

__all__ = [
    "PREFERENCE_METHODS",
    "DPOTrainer",
    "KTOTrainer",
    "PreferenceStats",
    "build_preference_trainer",
    "preference_data_source",
    "preference_trainer_from_checkpoint",
]


class DPOTrainer(PreferenceTrainer):
    """DPO on (prompt, chosen, rejected) pairs from ``data_source``."""

    method = "dpo"
    config: DPOConfig

    def __init__(
        self,
        lm: torch.nn.Module,
        tokenizer,
        data_source: PairSource,
        config: DPOConfig | None = None,
        reference: torch.nn.Module | None = None,
    ) -> None:
        super().__init__(lm, tokenizer, data_source, config or DPOConfig(), reference)

    def minibatch_loss(self, examples: Sequence[PreferencePair]) -> tuple[Tensor, dict[str, float]]:
        cfg, n = self.config, len(examples)
        rows = [(p.prompt, p.chosen) for p in examples] + [(p.prompt, p.rejected) for p in examples]
        batch = sequence_batch(self.tokenizer, rows, cfg.max_prompt_length, cfg.max_response_length)
        # Chosen and rejected in one forward pass (2n rows): one pass of the trunk instead of two.
        policy = batch_logprobs(self.lm, batch)
        with torch.no_grad():
            reference = batch_logprobs(self.reference, batch)
        weights = torch.tensor([p.weight for p in examples], dtype=torch.float32)
        out = dm.dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], cfg.beta, cfg.label_smoothing, weights)
        stats = {
            "reward_chosen": float(out.chosen_rewards.mean()),
            "reward_rejected": float(out.rejected_rewards.mean()),
            "reward_margin": float(out.margin.mean()),
            "accuracy": float(out.accuracy),
            "kl": float((policy.detach() - reference).mean()),
        }
        return out.loss, stats


class KTOTrainer(PreferenceTrainer):
    """KTO on (prompt, response, desirable) examples from ``data_source``."""

    method = "kto"
    config: KTOConfig

    def __init__(
        self,
        lm: torch.nn.Module,
        tokenizer,
        data_source: RatingSource,
        config: KTOConfig | None = None,
        reference: torch.nn.Module | None = None,
    ) -> None:
        super().__init__(lm, tokenizer, data_source, config or KTOConfig(), reference)

    def minibatch_loss(self, examples: Sequence[RatedResponse]) -> tuple[Tensor, dict[str, float]]:
        cfg, n = self.config, len(examples)
        rows = [(e.prompt, e.response) for e in examples]
        # KTO's mismatched pairs: prompt i with response i+1 (one example: itself).
        mismatched = [(e.prompt, examples[(i + 1) % n].response) for i, e in enumerate(examples)]
        batch = sequence_batch(self.tokenizer, rows, cfg.max_prompt_length, cfg.max_response_length)
        kl_batch = sequence_batch(self.tokenizer, mismatched, cfg.max_prompt_length, cfg.max_response_length)
        policy = batch_logprobs(self.lm, batch)
        with torch.no_grad():  # z0 is detached: no gradient through the reference point
            reference = batch_logprobs(self.reference, batch)
            z0 = dm.kto_reference_point(batch_logprobs(self.lm, kl_batch), batch_logprobs(self.reference, kl_batch))
        desirable = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
        weights = torch.tensor([e.weight for e in examples], dtype=torch.float32)
        out = dm.kto_loss(
            policy, reference, desirable, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight, weights
        )
        good, bad = out.rewards[desirable], out.rewards[~desirable]
        reward_chosen = float(good.mean()) if len(good) else float("nan")
        reward_rejected = float(bad.mean()) if len(bad) else float("nan")
        stats = {
            "reward_chosen": reward_chosen,
            "reward_rejected": reward_rejected,
            "reward_margin": reward_chosen - reward_rejected,
            "accuracy": float(out.accuracy),
            "kl": float(z0),
        }
        return out.loss, stats


def _trainer_class(method: str) -> type[DPOTrainer] | type[KTOTrainer]:
    if method == "dpo":
        return DPOTrainer
    if method == "kto":
        return KTOTrainer
    raise ValueError(f"policy method {method!r} is not a preference method; expected one of {PREFERENCE_METHODS}")


def build_preference_trainer(
    method: str,
    lm: torch.nn.Module,
    tokenizer,
    data_source: Callable[[], Sequence[Any]],
    config: DPOConfig | KTOConfig | None = None,
    reference: torch.nn.Module | None = None,
) -> DPOTrainer | KTOTrainer:
    """A DPOTrainer (``method="dpo"``, config a DPOConfig) or KTOTrainer (``"kto"``, a KTOConfig)."""
    cls = _trainer_class(method)
    expected = DPOConfig if cls is DPOTrainer else KTOConfig
    if config is not None and not isinstance(config, expected):
        raise TypeError(f"method {method!r} takes a {expected.__name__}, got {type(config).__name__}")
    return cls(lm, tokenizer, data_source, config, reference)  # type: ignore[arg-type]


def preference_data_source(
    method: str, ledger, is_heldout: Callable[[str], bool], config: DPOConfig | KTOConfig, lock: Any = None
) -> Callable[[], Sequence[Any]]:
    """The trainer's data source over its ledger: live pairs for DPO, thumbs (and flags) for KTO."""
    if _trainer_class(method) is DPOTrainer:
        assert isinstance(config, DPOConfig), type(config)
        return ledger_pairs(ledger, is_heldout, config, lock)
    assert isinstance(config, KTOConfig), type(config)
    return ledger_ratings(ledger, is_heldout, config, lock)


def preference_trainer_from_checkpoint(
    ckpt_dir: str | Path,
    data_source: Callable[[], Sequence[Any]],
    config: DPOConfig | KTOConfig | None = None,
) -> DPOTrainer | KTOTrainer:
    """A trainer rebuilt from a checkpoint directory alone (method, and config unless given, from it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = Path(ckpt_dir)
    state = read_state(ckpt)
    cls = _trainer_class(str(state.get("method", "")))
    if config is None:
        config = (DPOConfig if cls is DPOTrainer else KTOConfig)(**state["config"])
    lm = AutoModelForCausalLM.from_pretrained(ckpt / "policy")
    trainer = build_preference_trainer(
        cls.method, lm, AutoTokenizer.from_pretrained(ckpt / "policy"), data_source, config
    )
    trainer.restore(ckpt)
    return trainer
