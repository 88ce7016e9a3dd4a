"""The policy-training methods the loop can run, behind one small protocol.

``--policy-method`` (TrainerConfig.policy_method) picks one by name;
services.trainer.loop.policy_round builds, checkpoints and steps it through
:class:`PolicyTrainer` alone, so adding a method is: a trainer class that
satisfies the protocol, its config dataclass nested in TrainerConfig (returned
by TrainerConfig.policy_config for its name), and one entry in ``_BUILDERS``.
Trainer modules are imported when a method is built: the config imports this
module for the names without loading torch.

PPO, RLOO and GRPO sample answers and score them with the reward callable; DPO
and KTO (services.trainer.dpo) learn from the answers users judged, read at
every step from a data source over the ledger (``() -> examples``, built by
services.trainer.dpo.dpo_trainer.preference_data_source), which the builders
take as ``data_source`` and the sampling methods ignore.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

# The methods --policy-method accepts, in the order --help lists them.
POLICY_METHODS = ("ppo", "rloo", "grpo", "dpo", "kto")
# Those that learn from the ledger's judged answers through a data source, not from samples.
PREFERENCE_METHODS = ("dpo", "kto")
# Those that run data-parallel under torchrun (services.trainer.parallel); the others run in one process.
DATA_PARALLEL_METHODS = ("ppo",)

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
DataSource = Callable[[], Sequence[Any]]


class PolicyTrainer(Protocol):
    """What the loop needs of a policy trainer (PPOTrainer, PolicyGradientTrainer, DPOTrainer, KTOTrainer)."""

    step_count: int  # steps taken since the trainer was built from a store version (kept by checkpoints)
    tokenizer: Any
    reference: Any  # the frozen reference causal LM (policy v1): KL penalty and gate KL

    @property
    def policy(self) -> Any:
        """The causal LM being trained."""
        ...

    @property
    def prompts_per_step(self) -> int:
        """How many prompts :meth:`step` takes."""
        ...

    def step(self, prompts: Sequence[str], demonstrations: Sequence[tuple[str, str]] | None = None) -> Any:
        """One training step; returns its statistics: PPOStats (services.trainer.ppo.ppo_trainer) or, for
        DPO/KTO, PreferenceStats (mean_score, kl, kl_coef, policy_loss, grad_norm, samples_per_s, step alike)."""
        ...

    def save_policy(self, out_dir: str | Path) -> Path:
        """The servable causal LM (safetensors, config, tokenizer) into ``out_dir``."""
        ...

    def checkpoint(self, out_dir: str | Path) -> Path:
        """Everything needed to resume exactly, written atomically."""
        ...

    def restore(self, ckpt_dir: str | Path) -> None:
        """Load a :meth:`checkpoint` of this method."""
        ...


def _build_ppo(lm, tokenizer, reward_fn: RewardFn, config, data_source: DataSource | None = None) -> PolicyTrainer:
    from services.trainer.ppo.ppo_trainer import PPOTrainer

    return PPOTrainer(lm, tokenizer, reward_fn, config)


def _resume_ppo(ckpt_dir: Path, reward_fn: RewardFn, config, data_source: DataSource | None = None) -> PolicyTrainer:
    from services.trainer.ppo.ppo_trainer import PPOTrainer

    return PPOTrainer.from_checkpoint(ckpt_dir, reward_fn, config)


def _build_policy_gradient(
    lm, tokenizer, reward_fn: RewardFn, config, data_source: DataSource | None = None
) -> PolicyTrainer:
    from services.trainer.policy_gradient.rloo_trainer import PolicyGradientTrainer

    return PolicyGradientTrainer(lm, tokenizer, reward_fn, config)


def _resume_policy_gradient(
    ckpt_dir: Path, reward_fn: RewardFn, config, data_source: DataSource | None = None
) -> PolicyTrainer:
    from services.trainer.policy_gradient.rloo_trainer import PolicyGradientTrainer

    return PolicyGradientTrainer.from_checkpoint(ckpt_dir, reward_fn, config)


def _needs_source(method: str, data_source: DataSource | None) -> DataSource:
    if data_source is None:
        raise ValueError(f"--policy-method {method} learns from the ledger's feedback: it needs a data_source")
    return data_source


def _build_preference(
    method: str, lm, tokenizer, reward_fn: RewardFn, config, data_source: DataSource | None = None
) -> PolicyTrainer:
    from services.trainer.dpo.dpo_trainer import build_preference_trainer

    return build_preference_trainer(method, lm, tokenizer, _needs_source(method, data_source), config)


def _resume_preference(
    method: str, ckpt_dir: Path, reward_fn: RewardFn, config, data_source: DataSource | None = None
) -> PolicyTrainer:
    from services.trainer.dpo.dpo_trainer import preference_trainer_from_checkpoint

    trainer = preference_trainer_from_checkpoint(ckpt_dir, _needs_source(method, data_source), config)
    if trainer.method != method:
        raise ValueError(f"{ckpt_dir}: a {trainer.method} checkpoint cannot resume a {method} trainer")
    return trainer


# name -> (build from a loaded LM, rebuild from a checkpoint directory)
_BUILDERS: dict[str, tuple[Callable[..., PolicyTrainer], Callable[..., PolicyTrainer]]] = {
    "ppo": (_build_ppo, _resume_ppo),
    "rloo": (_build_policy_gradient, _resume_policy_gradient),
    "grpo": (_build_policy_gradient, _resume_policy_gradient),
    "dpo": (partial(_build_preference, "dpo"), partial(_resume_preference, "dpo")),
    "kto": (partial(_build_preference, "kto"), partial(_resume_preference, "kto")),
}


def _builders(method: str) -> tuple[Callable[..., PolicyTrainer], Callable[..., PolicyTrainer]]:
    if method not in _BUILDERS:
        raise ValueError(f"unknown policy method {method!r}; use one of {', '.join(_BUILDERS)}")
    return _BUILDERS[method]


def build_trainer(
    method: str, lm, tokenizer, reward_fn: RewardFn, config, data_source: DataSource | None = None
) -> PolicyTrainer:
    """A fresh trainer of ``method`` on ``lm`` (its reference a frozen copy of ``lm``);
    ``data_source`` is required by DPO and KTO and ignored by the others."""
    return _builders(method)[0](lm, tokenizer, reward_fn, config, data_source)


def resume_trainer(
    method: str, ckpt_dir: Path, reward_fn: RewardFn, config, data_source: DataSource | None = None
) -> PolicyTrainer:
    """A trainer of ``method`` rebuilt from its checkpoint directory (``data_source`` as for build_trainer)."""
    return _builders(method)[1](ckpt_dir, reward_fn, config, data_source)
