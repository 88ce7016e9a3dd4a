"""The policy-training methods the loop can run, behind one small protocol.

``--policy-method`` (TrainerConfig.policy_method) picks one by name;
services.trainer.loop.policy_round builds, checkpoints and steps it through
:class:`PolicyTrainer` alone, so adding a method is: a trainer class that
satisfies the protocol, its config dataclass nested in TrainerConfig (returned
by TrainerConfig.policy_config for its name), and one entry in ``_BUILDERS``.
Trainer modules are imported when a method is built: the config imports this
module for the names without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

# The methods --policy-method accepts, in the order --help lists them.
POLICY_METHODS = ("ppo", "rloo", "grpo")

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


class PolicyTrainer(Protocol):
    """What the loop needs of a policy trainer (PPOTrainer, PolicyGradientTrainer)."""

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
        """One training step; returns a PPOStats-shaped object (services.trainer.ppo.ppo_trainer.PPOStats)."""
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


def _build_ppo(lm, tokenizer, reward_fn: RewardFn, config) -> PolicyTrainer:
    from services.trainer.ppo.ppo_trainer import PPOTrainer

    return PPOTrainer(lm, tokenizer, reward_fn, config)


def _resume_ppo(ckpt_dir: Path, reward_fn: RewardFn, config) -> PolicyTrainer:
    from services.trainer.ppo.ppo_trainer import PPOTrainer

    return PPOTrainer.from_checkpoint(ckpt_dir, reward_fn, config)


def _build_policy_gradient(lm, tokenizer, reward_fn: RewardFn, config) -> PolicyTrainer:
    from services.trainer.policy_gradient.rloo_trainer import PolicyGradientTrainer

    return PolicyGradientTrainer(lm, tokenizer, reward_fn, config)


def _resume_policy_gradient(ckpt_dir: Path, reward_fn: RewardFn, config) -> PolicyTrainer:
    from services.trainer.policy_gradient.rloo_trainer import PolicyGradientTrainer

    return PolicyGradientTrainer.from_checkpoint(ckpt_dir, reward_fn, config)


# name -> (build from a loaded LM, rebuild from a checkpoint directory)
_BUILDERS: dict[str, tuple[Callable[..., PolicyTrainer], Callable[..., PolicyTrainer]]] = {
    "ppo": (_build_ppo, _resume_ppo),
    "rloo": (_build_policy_gradient, _resume_policy_gradient),
    "grpo": (_build_policy_gradient, _resume_policy_gradient),
}


def _builders(method: str) -> tuple[Callable[..., PolicyTrainer], Callable[..., PolicyTrainer]]:
    if method not in _BUILDERS:
        raise ValueError(f"unknown policy method {method!r}; use one of {', '.join(_BUILDERS)}")
    return _BUILDERS[method]


def build_trainer(method: str, lm, tokenizer, reward_fn: RewardFn, config) -> PolicyTrainer:
    """A fresh trainer of ``method`` on ``lm`` (its reference a frozen copy of ``lm``)."""
    return _builders(method)[0](lm, tokenizer, reward_fn, config)


def resume_trainer(method: str, ckpt_dir: Path, reward_fn: RewardFn, config) -> PolicyTrainer:
    """A trainer of ``method`` rebuilt from its checkpoint directory."""
    return _builders(method)[1](ckpt_dir, reward_fn, config)
