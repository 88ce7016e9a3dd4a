"""The settings every policy method shares, declared and checked once.

Each method's config (PPOConfig, RLOOConfig, GRPOConfig, DPOConfig, KTOConfig)
subclasses :class:`MethodConfig`, through :class:`SampledConfig`
(services.trainer.methods.sampled_config) for the methods that sample and
score answers or :class:`PreferenceConfig` (services.trainer.methods.dpo) for
those that learn from judged answers, and declares only its own fields. A
method that wants another default for a shared field says so with
:func:`method_defaults`, without declaring the field again.

Every field is a :func:`shared.config.setting`; the trainer composes one
config per registered method (services.trainer.methods.registry), so each is a
flag ``--<method>-<name>`` and a variable ``RLHF_TRAINER_<METHOD>_<NAME>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from services.trainer.methods.lora_settings import target_modules_problem
from shared.config import Renamed, check, setting, upgrade_renamed

C = TypeVar("C", bound="MethodConfig")


@dataclass(frozen=True)
class MethodConfig:
    """What every policy method shares. Each name has one meaning in every method:

    - ``batch_size``: prompts per step. PPO, RLOO and GRPO sample each
      ``samples_per_prompt`` times (``rollouts_per_step`` responses); DPO and
      KTO train on as many judged examples, one prompt each (DPO: a compared
      pair, KTO: a rated response).
    - ``mini_batch_size``: rows per optimizer step (sampled responses, or
      judged examples); it must divide the step's rows (:attr:`rows_per_step`).
    - ``epochs``: passes over each step's rows.
    - ``kl_coef``: the weight of the KL to the frozen reference (beta): PPO's
      per-token penalty (its starting value when ``--ppo-adaptive-kl``
      adapts it), RLOO's per-sequence penalty, GRPO's k3 loss term, DPO's and
      KTO's beta.
    - ``max_prompt_length``: prompt tokens kept; fitted to the policy's context
      window by :meth:`fit_context`.
    - ``ptx_coef``/``ptx_batch_size``: the SFT loss on users' corrections mixed
      into every optimizer step (InstructGPT's PPO-ptx), for every method.
    - ``lora_*``: train a LoRA adapter on the frozen policy instead of all its
      weights (services.trainer.methods.lora); the reference is then the base
      with the adapter off, and promotion stores an adapter version.
    """

    # Settings renamed in this release (old name -> new): shared.config reads the old flag and variable.
    renamed: ClassVar[tuple[Renamed, ...]] = ()

    # --- batch shape -------------------------------------------------------
    batch_size: int = setting(
        16,
        "prompts per step: each sampled samples_per_prompt times (ppo, rloo, grpo), or judged examples, one "
        "prompt each (dpo: compared pairs, kto: rated responses)",
    )
    mini_batch_size: int = setting(
        8, "rows (sampled responses, or judged examples) per optimizer step; must divide the step's rows"
    )
    epochs: int = setting(2, "passes over each step's rows")

    # --- optimizer ---------------------------------------------------------
    learning_rate: float = setting(1e-4, "AdamW learning rate of the policy")
    adam_eps: float = setting(1e-8, "AdamW epsilon")
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay")
    max_grad_norm: float = setting(1.0, "clip the global gradient norm to this (0 disables)")

    # --- the pull to the reference ----------------------------------------
    kl_coef: float = setting(
        0.1,
        "beta: weight of the KL to the frozen reference (ppo: the initial value when adaptive; rloo: per-sequence "
        "penalty; grpo: k3 loss term; dpo/kto: the loss's beta)",
    )

    # --- lengths -----------------------------------------------------------
    max_prompt_length: int = setting(128, "prompt tokens kept (the end of a prompt is kept)")

    # --- PPO-ptx: corrections as demonstrations --------------------------
    ptx_coef: float = setting(
        1.0, "weight of the SFT loss on the users' corrections mixed into each optimizer step (0: corrections off)"
    )
    ptx_batch_size: int = setting(16, "demonstrations per optimizer step (cycled through the given list)")

    # --- LoRA adapters (services.trainer.methods.lora) ---------------------
    lora_rank: int = setting(
        0,
        "LoRA rank: > 0 trains an adapter on the frozen policy (reference = the base with the adapter off, "
        "one copy in memory) and promotes adapter versions; 0 fine-tunes every weight",
    )
    lora_alpha: int = setting(16, "LoRA alpha: the adapter's update is scaled by alpha / rank")
    lora_dropout: float = setting(
        0.0, "dropout on the adapter's input, written into the adapter config (the trainer keeps dropout off)"
    )
    lora_target_modules: str = setting(
        "all-linear",
        'modules that get an adapter: "all-linear" (every linear layer but the output head) or a comma list '
        "of module names, e.g. q_proj,v_proj",
    )

    # --- reproducibility ---------------------------------------------------
    seed: int = setting(0, "seed for sampling and for picking and shuffling each step's rows")
    num_threads: int = setting(0, "torch CPU threads (0 leaves torch's default; the trainer sets --torch-threads)")

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.mini_batch_size >= 1, "mini_batch_size", f"must be >= 1, got {self.mini_batch_size}")
        check(
            self.rows_per_step % self.mini_batch_size == 0,
            "mini_batch_size",
            f"must divide {self.rows_description} ({self.rows_per_step}), got {self.mini_batch_size}",
        )
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0 (0 disables), got {self.max_grad_norm}")
        check(self.kl_coef >= 0, "kl_coef", f"must be >= 0, got {self.kl_coef}")
        check(self.max_prompt_length >= 1, "max_prompt_length", f"must be >= 1, got {self.max_prompt_length}")
        check(self.ptx_coef >= 0, "ptx_coef", f"must be >= 0, got {self.ptx_coef}")
        check(self.ptx_batch_size >= 1, "ptx_batch_size", f"must be >= 1, got {self.ptx_batch_size}")
        check(self.lora_rank >= 0, "lora_rank", f"must be >= 0 (0 = full fine-tuning), got {self.lora_rank}")
        check(self.lora_alpha > 0, "lora_alpha", f"must be > 0, got {self.lora_alpha}")
        check(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        targets_problem = target_modules_problem(self.lora_target_modules)
        check(targets_problem is None, "lora_target_modules", targets_problem or "")
        check(self.num_threads >= 0, "num_threads", f"must be >= 0 (0 = torch default), got {self.num_threads}")

    # --- what the subclasses define ------------------------------------------
    @property
    def rows_per_step(self) -> int:
        """Rows one step trains on (sampled responses, or judged examples)."""
        return self.batch_size

    @property
    def rows_description(self) -> str:
        """How :attr:`rows_per_step` is computed, for error messages."""
        return "batch_size"

    @property
    def response_length(self) -> int:
        """Longest response the method samples or trains on: with the prompt it must fit the
        context, and the gate samples answers this long."""
        raise NotImplementedError

    # --- shared behaviour ------------------------------------------------------
    @property
    def prompts_per_step(self) -> int:
        """Prompts the loop hands one step (DPO and KTO take and ignore them)."""
        return self.batch_size

    @property
    def num_mini_batches(self) -> int:
        return self.rows_per_step // self.mini_batch_size

    def fit_context(self: C, max_positions: int | None, num_threads: int = 0) -> C:
        """This config for a policy with a ``max_positions`` context window (None or 0: unknown):
        prompts are cut so that a prompt and its response fit; ``num_threads`` is the trainer's."""
        prompt_limit = self.max_prompt_length
        if max_positions:
            prompt_limit = max(1, min(prompt_limit, max_positions - self.response_length))
        return dataclasses.replace(self, max_prompt_length=prompt_limit, num_threads=num_threads)

    @classmethod
    def from_saved(cls: type[C], values: dict[str, Any]) -> C:
        """The config a checkpoint saved (``asdict``), written by this release or the one before."""
        return cls(**upgrade_renamed(cls, cls.upgrade_saved(values)))

    @classmethod
    def upgrade_saved(cls, values: dict[str, Any]) -> dict[str, Any]:
        """A method's own conversion of a saved config whose meaning changed (default: none)."""
        return values


def method_defaults(**defaults: Any) -> Callable[[type[C]], type[C]]:
    """Give shared fields other defaults in a method's config (before ``@dataclass``), keeping
    their help text and checks: ``@method_defaults(batch_size=4)``. Only the default changes."""

    def apply(cls: type[C]) -> type[C]:
        inherited: dict[str, dataclasses.Field[Any]] = {}
        for base in reversed(cls.__mro__[1:]):
            inherited.update(getattr(base, "__dataclass_fields__", {}))
        annotations = cls.__dict__.get("__annotations__", {})
        for name, value in defaults.items():
            if name not in inherited:
                raise TypeError(f"{cls.__name__}: no shared field {name!r} to give a default")
            base_field = inherited[name]
            annotations[name] = base_field.type
            setattr(cls, name, dataclasses.field(default=value, metadata=base_field.metadata))
        cls.__annotations__ = annotations
        return cls

    return apply
