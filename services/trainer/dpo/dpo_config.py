"""Every DPO and KTO hyperparameter, in frozen dataclasses.

Both methods share the optimizer, batch, length and PPO-ptx settings
(:class:`PreferenceOptimConfig`); each adds its own loss and data settings.
Fields are declared with :func:`shared.config.setting`, so composed into the
trainer's config with ``shared.config.nested`` (like ``TrainerConfig.ppo``)
each becomes a flag ``--dpo-<name>`` / ``--kto-<name>`` with this help text.

Defaults: beta 0.1 as in both papers (Rafailov et al. 2023; Ethayarajh et al.
2024). The learning rate is larger than the papers' 5e-7..5e-6 because the
models here are tiny and a live round is a handful of steps; it is not tuned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

from shared.config import check, setting


@dataclass(frozen=True)
class PreferenceOptimConfig:
    """What DPO and KTO share: batch shape, optimizer, lengths, PPO-ptx, seed."""

    # --- batch shape -------------------------------------------------------
    batch_size: int = setting(
        16, "examples (DPO: pairs, KTO: rated responses) per step; also the prompts the round hands each step"
    )
    mini_batch_size: int = setting(8, "examples per optimizer step; must divide batch_size")
    epochs: int = setting(1, "passes over each step's batch")

    # --- optimizer ---------------------------------------------------------
    learning_rate: float = setting(5e-5, "AdamW learning rate for the policy (untuned for real models)")
    adam_eps: float = setting(1e-8, "AdamW epsilon")
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay")
    max_grad_norm: float = setting(1.0, "clip the global gradient norm to this (0 disables)")

    # --- lengths -----------------------------------------------------------
    max_prompt_length: int = setting(128, "prompt tokens kept (from the left: the end of a prompt is kept)")
    max_response_length: int = setting(64, "response tokens kept, EOS included (from the right: the start is kept)")

    # --- PPO-ptx: corrections as demonstrations --------------------------
    ptx_coef: float = setting(
        1.0, "weight of the SFT loss on the users' corrections mixed into each optimizer step (0: corrections off)"
    )
    ptx_batch_size: int = setting(16, "demonstrations per optimizer step (cycled through the given list)")

    # --- reproducibility ---------------------------------------------------
    seed: int = setting(0, "seed for picking each step's examples")
    num_threads: int = setting(0, "torch CPU threads (0 leaves torch's default; the trainer sets --torch-threads)")

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.mini_batch_size >= 1, "mini_batch_size", f"must be >= 1, got {self.mini_batch_size}")
        check(
            self.batch_size % self.mini_batch_size == 0,
            "mini_batch_size",
            f"must divide batch_size ({self.batch_size}), got {self.mini_batch_size}",
        )
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0 (0 disables), got {self.max_grad_norm}")
        check(self.max_prompt_length >= 1, "max_prompt_length", f"must be >= 1, got {self.max_prompt_length}")
        check(
            self.max_response_length >= 2,
            "max_response_length",
            f"must be >= 2 (a token and EOS), got {self.max_response_length}",
        )
        check(self.ptx_coef >= 0, "ptx_coef", f"must be >= 0, got {self.ptx_coef}")
        check(self.ptx_batch_size >= 1, "ptx_batch_size", f"must be >= 1, got {self.ptx_batch_size}")
        check(self.num_threads >= 0, "num_threads", f"must be >= 0 (0 = torch default), got {self.num_threads}")


@dataclass(frozen=True)
class DPOConfig(PreferenceOptimConfig):
    """Online DPO on the pairs users compared, against the frozen reference (policy v1)."""

    beta: float = setting(0.1, "DPO beta: strength of the pull to the reference (larger = closer to it)")
    label_smoothing: float = setting(
        0.0, "conservative DPO: the probability that a user's choice is flipped noise (0 = plain DPO; < 0.5)"
    )
    max_pairs: int = setting(
        512, "the most recent preference pairs (by ledger order) trained on; older ones are left out (online)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        check(0 <= self.label_smoothing < 0.5, "label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        check(self.max_pairs >= 1, "max_pairs", f"must be >= 1, got {self.max_pairs}")


@dataclass(frozen=True)
class KTOConfig(PreferenceOptimConfig):
    """KTO on thumbs (ratings) and flags, against the frozen reference (policy v1)."""

    beta: float = setting(0.1, "KTO beta: strength of the pull to the reference (larger = closer to it)")
    desirable_weight: float = setting(
        1.0, "lambda_D: loss weight of desirable responses (raise it when thumbs down outnumber thumbs up)"
    )
    undesirable_weight: float = setting(1.0, "lambda_U: loss weight of undesirable responses")
    max_examples: int = setting(
        1024, "the most recent rated or flagged responses (by ledger order) trained on; older ones are left out"
    )
    flags_as_undesirable: bool = setting(
        True, "count a flagged response (unsafe, offensive, wrong) as undesirable, like a thumbs down"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        check(self.desirable_weight > 0, "desirable_weight", f"must be > 0, got {self.desirable_weight}")
        check(self.undesirable_weight > 0, "undesirable_weight", f"must be > 0, got {self.undesirable_weight}")
        check(self.max_examples >= 1, "max_examples", f"must be >= 1, got {self.max_examples}")


Config = TypeVar("Config", DPOConfig, KTOConfig)


def fit_context(config: Config, max_positions: int | None, num_threads: int = 0) -> Config:
    """``config`` for a policy with a ``max_positions`` context window (None or 0: unknown):
    prompts are cut so that prompt + response fits, as TrainerConfig.ppo_config does for PPO."""
    prompt_limit = config.max_prompt_length
    if max_positions:
        prompt_limit = max(1, min(prompt_limit, max_positions - config.max_response_length))
    return dataclasses.replace(config, max_prompt_length=prompt_limit, num_threads=num_threads)
