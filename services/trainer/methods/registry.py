"""The policy-training methods the loop can run: one registry entry each.

``--policy-method`` (TrainerConfig.policy_method) picks one by name. Everything
else that depends on the set of methods is derived from :data:`REGISTRY`:
the names the flag accepts (POLICY_METHODS), which learn from the ledger's
judged answers (PREFERENCE_METHODS), which run data-parallel under torchrun
(DATA_PARALLEL_METHODS), TrainerConfig's nested config per method (flags
``--<name>-<field>``) and how a trainer is built and resumed. Adding a method
is: its config (a MethodConfig subclass), its trainer (a MethodTrainer
subclass with its own math and ``step``) and one :class:`PolicyMethod` here.

Trainer classes are named by import path and imported when a method is built:
TrainerConfig imports this module for the names and configs without loading
torch.

Methods that learn from ``SAMPLES`` sample answers and score them with the
reward callable; those that learn from ``JUDGED_ANSWERS`` read the answers
users judged at every step from a data source over the ledger
(``() -> examples``: services.trainer.methods.dpo.dpo_data.ledger_source).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.trainer.methods.base_config import MethodConfig
from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.dpo.kto_config import KTOConfig
from services.trainer.methods.policy_gradient.grpo_config import GRPOConfig
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.stop_token import StopToken  # torch-free

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
DataSource = Callable[[], Sequence[Any]]

SAMPLES = "samples scored by the reward model"
JUDGED_ANSWERS = "the ledger's judged answers"


@dataclass(frozen=True)
class PolicyMethod:
    """One method: its name (``--policy-method``, the flag prefix of its settings), its
    config class, its trainer class (``module:Class``), what it learns from, and
    whether it runs data-parallel under torchrun (services.trainer.parallel)."""

    name: str
    config: type[MethodConfig]
    trainer: str
    learns_from: str
    data_parallel: bool = False

    def trainer_class(self) -> Any:
        module, _, name = self.trainer.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def env_prefix(self) -> str:
        """The variables of its settings: RLHF_TRAINER_<NAME>_<FIELD>."""
        return f"RLHF_TRAINER_{self.name.upper()}_"


_METHODS = "services.trainer.methods"
# In the order --help lists them; ppo stays the default.
REGISTRY: dict[str, PolicyMethod] = {
    m.name: m
    for m in (
        PolicyMethod("ppo", PPOConfig, f"{_METHODS}.ppo.ppo_trainer:PPOTrainer", SAMPLES, data_parallel=True),
        PolicyMethod("rloo", RLOOConfig, f"{_METHODS}.policy_gradient.rloo_trainer:RLOOTrainer", SAMPLES),
        PolicyMethod("grpo", GRPOConfig, f"{_METHODS}.policy_gradient.grpo_trainer:GRPOTrainer", SAMPLES),
        PolicyMethod("dpo", DPOConfig, f"{_METHODS}.dpo.dpo_trainer:DPOTrainer", JUDGED_ANSWERS),
        PolicyMethod("kto", KTOConfig, f"{_METHODS}.dpo.kto_trainer:KTOTrainer", JUDGED_ANSWERS),
    )
}

# The methods --policy-method accepts, in the order --help lists them.
POLICY_METHODS = tuple(REGISTRY)
# Those that learn from the ledger's judged answers through a data source, not from samples.
PREFERENCE_METHODS = tuple(name for name, m in REGISTRY.items() if m.learns_from == JUDGED_ANSWERS)
# Those that run data-parallel under torchrun (services.trainer.parallel); the others run in one process.
DATA_PARALLEL_METHODS = tuple(name for name, m in REGISTRY.items() if m.data_parallel)


class PolicyTrainer(Protocol):
    """What the loop needs of a policy trainer (every MethodTrainer subclass)."""

    step_count: int  # steps taken since the trainer was built from a store version (kept by checkpoints)
    stop_token: StopToken  # the loop's stop request; data-parallel PPO polls it where every rank agrees
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
        """One training step; returns its statistics: PolicyUpdateStats
        (services.trainer.methods.sampled_trainer) or, for DPO/KTO, PreferenceStats (mean_score,
        kl, kl_coef, policy_loss, grad_norm, samples_per_s, step alike)."""
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


def policy_method(name: str) -> PolicyMethod:
    if name not in REGISTRY:
        raise ValueError(f"unknown policy method {name!r}; use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _learns_from(method: PolicyMethod, reward_fn: RewardFn | None, data_source: DataSource | None) -> Any:
    """What the method's trainer takes after the tokenizer: the reward callable or the data source."""
    if method.learns_from == SAMPLES:
        return reward_fn
    if data_source is None:
        raise ValueError(f"--policy-method {method.name} learns from the ledger's feedback: it needs a data_source")
    return data_source


def _checked(method: PolicyMethod, config: MethodConfig | None) -> MethodConfig | None:
    if config is not None and type(config) is not method.config:
        raise TypeError(f"method {method.name!r} takes a {method.config.__name__}, got {type(config).__name__}")
    return config


def build_trainer(
    method: str, lm, tokenizer, reward_fn: RewardFn | None, config, data_source: DataSource | None = None
) -> PolicyTrainer:
    """A fresh trainer of ``method`` on ``lm`` (its reference a frozen copy of ``lm``);
    ``data_source`` is required by the methods that learn from judged answers and ignored by the others."""
    entry = policy_method(method)
    source = _learns_from(entry, reward_fn, data_source)
    trainer: PolicyTrainer = entry.trainer_class()(lm, tokenizer, source, _checked(entry, config))
    return trainer


def resume_trainer(
    method: str, ckpt_dir: Path, reward_fn: RewardFn | None, config, data_source: DataSource | None = None
) -> PolicyTrainer:
    """A trainer of ``method`` rebuilt from its checkpoint directory (``data_source`` as for build_trainer);
    a checkpoint of another method is refused."""
    entry = policy_method(method)
    source = _learns_from(entry, reward_fn, data_source)
    trainer: PolicyTrainer = entry.trainer_class().from_checkpoint(Path(ckpt_dir), source, _checked(entry, config))
    return trainer
