"""What every policy trainer shares, like TRL's trainers share a base.

:class:`MethodTrainer` owns the policy and its frozen reference copy, AdamW over
the trainable parameters, the shuffle generator, the ptx loss on users'
corrections (PPO-ptx, for every method), the served-policy save and
checkpoint/restore (atomic, without pickle: services.trainer.methods.checkpoint).
A method subclasses it (PPOTrainer, RLOOTrainer, GRPOTrainer, DPOTrainer,
KTOTrainer), names itself in ``method`` and keeps only its own math and
``step``; what it adds to a checkpoint goes through :meth:`_extra_state` and
:meth:`_save_extra`/:meth:`_load_extra`.

With ``lora_rank > 0`` the policy is a PEFT model training a LoRA adapter, the
reference is that model with its adapter switched off (one copy of the base:
services.trainer.methods.lora), AdamW holds the adapter's parameters only, and
``save_policy`` and checkpoints write the adapter, not the base.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from services.trainer.methods.base_config import MethodConfig
from services.trainer.methods.checkpoint import (
    RNG_FILE,
    STATE_FILE,
    atomic_dir,
    load_optimizer,
    read_state,
    save_optimizer,
    save_served_policy,
)
from services.trainer.methods.lora import (
    AdapterOffReference,
    is_peft_model,
    load_adapter_lm,
    load_adapter_weights,
    save_adapter,
    with_adapter,
)
from services.trainer.methods.model import CausalLM, disable_dropout
from services.trainer.methods.rollout import DemonstrationBatch, demonstration_batch, demonstration_loss
from services.trainer.stop_token import StopToken
from shared.models.adapters import ADAPTER_CONFIG

ConfigT = TypeVar("ConfigT", bound=MethodConfig)
TOKENIZER_DIR = "tokenizer"  # a LoRA checkpoint's tokenizer (its policy/ holds PEFT's files alone)
Trainer = TypeVar("Trainer", bound="MethodTrainer")


class MethodTrainer(Generic[ConfigT]):
    """The policy, its frozen reference, AdamW, ptx and checkpoints. Not thread-safe."""

    method: ClassVar[str] = ""  # the registry's name of the method (kept in checkpoints)
    config_class: ClassVar[type[MethodConfig]]

    def __init__(
        self, lm: torch.nn.Module, tokenizer, config: ConfigT, reference: torch.nn.Module | None = None
    ) -> None:
        """``lm`` is trained in place; ``reference`` (default: a copy of ``lm``) stays frozen.
        With ``lora_rank > 0``, ``lm`` (a PEFT model: its adapter trains on) gets an adapter and
        the reference is its base: passing another reference is refused."""
        self.config: ConfigT = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs both a pad and an eos token for batched training")
        # generate() samples from torch's global generator (it takes no generator
        # argument), so the seed is global; checkpoints save its state.
        torch.manual_seed(config.seed)
        self.tokenizer = tokenizer
        # Where the base weights of a LoRA run are on disk, for checkpoints (which hold the adapter
        # only): the directory the LM was loaded from; the loop sets it to the store version's.
        self.lora_base_dir: Path | None = _loaded_from(lm)
        if config.lora_rank:
            if reference is not None:
                raise ValueError("a LoRA run's reference is its base with the adapter off; pass no reference")
            lm = with_adapter(lm, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
        elif _is_peft(lm):  # an adapter version fine-tuned in full: its merged weights
            lm = cast(Any, lm).merge_and_unload()
        disable_dropout(lm)
        lm.eval()  # no dropout: the same tokens get the same log-prob in every pass; gradients still flow
        self.lm: CausalLM = lm
        if config.lora_rank:
            self.reference: CausalLM = AdapterOffReference(lm)
        else:
            self.reference = reference if reference is not None else copy.deepcopy(lm)
            self.reference.requires_grad_(False).eval()
            disable_dropout(self.reference)
        self.model: torch.nn.Module = self._trained_module(lm)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.learning_rate,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        self._ptx_cursor = 0
        # The online loop hands its own (services.trainer.loop.policy_round); alone, a trainer never stops.
        self.stop_token = StopToken()

    def _trained_module(self, lm: torch.nn.Module) -> torch.nn.Module:
        """What the optimizer trains: the LM itself, or the LM with a head of the method's (PPO's value head)."""
        return lm

    @property
    def adapter_run(self) -> bool:
        """True when the trainer trains a LoRA adapter (``lora_rank > 0``) rather than every weight."""
        return bool(self.config.lora_rank)

    @property
    def policy(self) -> CausalLM:
        """The causal LM being trained."""
        return self.lm

    @property
    def prompts_per_step(self) -> int:
        """How many prompts :meth:`step` takes (``batch_size``: see MethodConfig)."""
        return self.config.prompts_per_step

    # --- PPO-ptx: the users' corrections as demonstrations ----------------------------
    def _next_demonstrations(self, demonstrations: Sequence[tuple[str, str]] | None) -> DemonstrationBatch | None:
        """The next ``ptx_batch_size`` demonstrations, cycling through them, as a batch; None
        when there are none or ptx is off."""
        cfg = self.config
        if not demonstrations or cfg.ptx_coef == 0:
            return None
        n = min(cfg.ptx_batch_size, len(demonstrations))
        picked = [demonstrations[(self._ptx_cursor + i) % len(demonstrations)] for i in range(n)]
        self._ptx_cursor = (self._ptx_cursor + n) % len(demonstrations)
        return demonstration_batch(self.tokenizer, picked, cfg.max_prompt_length, cfg.response_length)

    def _ptx_loss(self, demonstrations: Sequence[tuple[str, str]] | None) -> Tensor | None:
        """SFT loss on the next ``ptx_batch_size`` demonstrations (None without any)."""
        batch = self._next_demonstrations(demonstrations)
        return None if batch is None else demonstration_loss(self.policy, batch)

    # --- saving -------------------------------------------------------------------------
    def save_policy(self, out_dir: str | Path) -> Path:
        """The causal LM alone (safetensors + config + tokenizer): what the policy service serves;
        for a LoRA run the adapter alone (PEFT's files: an adapter version's payload)."""
        if self.adapter_run:
            return save_adapter(self.policy, out_dir)
        return save_served_policy(self.policy, self.tokenizer, out_dir)

    def checkpoint(self, out_dir: str | Path) -> Path:
        """Everything needed to resume exactly: policy, reference, optimizer moments, step count,
        ptx cursor, RNG states and the method's own state. Atomic. A LoRA run's checkpoint holds the
        adapter and names its base's directory (the base never changes, so it is not copied)."""
        lora: dict[str, Any] = {}
        if self.adapter_run:
            if self.lora_base_dir is None:
                raise ValueError(
                    "a LoRA checkpoint names its base model's directory: load the LM with from_pretrained(dir) "
                    "or set trainer.lora_base_dir"
                )
            lora = {"lora_base_dir": str(self.lora_base_dir)}
        with atomic_dir(out_dir) as tmp:
            self.save_policy(tmp / "policy")
            if self.adapter_run:
                self.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
            else:
                self.reference.save_pretrained(tmp / "reference", safe_serialization=True)
            self._save_extra(tmp)
            save_optimizer(self.optimizer, tmp)
            rng = {"torch": torch.get_rng_state(), "shuffle": self.shuffle_generator.get_state()}
            save_file(rng, str(tmp / RNG_FILE))
            state = {
                "method": self.method,
                "step_count": self.step_count,
                "ptx_cursor": self._ptx_cursor,
                **self._extra_state(),
                **lora,
                "config": asdict(self.config),
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        return Path(out_dir)

    def restore(self, ckpt_dir: str | Path) -> None:
        """Load a :meth:`checkpoint` of the same method into this trainer (same architecture)."""
        from transformers import AutoModelForCausalLM

        ckpt = Path(ckpt_dir)
        state = self._read_own_state(ckpt)
        saved_adapter = (ckpt / "policy" / ADAPTER_CONFIG).is_file()
        if saved_adapter != self.adapter_run:
            kinds = {True: "a LoRA adapter (lora_rank > 0)", False: "full weights (lora_rank 0)"}
            raise ValueError(
                f"{ckpt}: a checkpoint of {kinds[saved_adapter]} cannot resume a trainer of {kinds[self.adapter_run]}"
            )
        if self.adapter_run:  # the reference is the base, which a checkpoint never changes
            load_adapter_weights(self.policy, ckpt / "policy")
        for module, sub in () if self.adapter_run else ((self.policy, "policy"), (self.reference, "reference")):
            saved = AutoModelForCausalLM.from_pretrained(ckpt / sub)  # resolves tied weights
            module.load_state_dict(saved.state_dict())
        self._load_extra(ckpt)
        load_optimizer(self.optimizer, ckpt)
        rng = load_file(str(ckpt / RNG_FILE))
        torch.set_rng_state(rng["torch"])
        self.shuffle_generator.set_state(rng["shuffle"])
        self.step_count = state["step_count"]
        self._ptx_cursor = state["ptx_cursor"]
        self._load_extra_state(state)

    # What a method adds to the checkpoint (default: nothing).
    def _extra_state(self) -> dict[str, Any]:
        """JSON-able state of the method's own, saved in trainer_state.json."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Read back :meth:`_extra_state`."""

    def _save_extra(self, ckpt_dir: Path) -> None:
        """Tensor files of the method's own (PPO's value head) into the checkpoint directory."""

    def _load_extra(self, ckpt_dir: Path) -> None:
        """Read back :meth:`_save_extra`."""

    @classmethod
    def _read_own_state(cls, ckpt_dir: Path) -> dict[str, Any]:
        """The checkpoint's trainer state, refused unless it is this method's."""
        state = read_state(ckpt_dir)
        saved_method = saved_method_of(state)
        if saved_method != cls.method:
            raise ValueError(
                f"{Path(ckpt_dir) / STATE_FILE}: a {saved_method} checkpoint cannot resume a {cls.method} trainer; "
                "delete it (the round restarts from the current policy version) or switch the method back"
            )
        return state

    @classmethod
    def from_checkpoint(cls: type[Trainer], ckpt_dir: str | Path, learns_from: Any, config: Any = None) -> Trainer:
        """A trainer rebuilt from a checkpoint directory alone (config from it unless given);
        ``learns_from`` is what the method's constructor takes after the tokenizer (the reward
        function, or the data source of judged answers)."""
        lm, tokenizer = load_checkpointed_lm(ckpt_dir)
        method_class: Any = cls  # the methods' constructors take (lm, tokenizer, learns_from, config)
        trainer: Trainer = method_class(lm, tokenizer, learns_from, config or cls.saved_config(ckpt_dir))
        trainer.restore(ckpt_dir)
        return trainer

    @classmethod
    def saved_config(cls, ckpt_dir: str | Path) -> MethodConfig:
        """The config a checkpoint of this method was written with."""
        return cls.config_class.from_saved(cls._read_own_state(Path(ckpt_dir))["config"])


def saved_method_of(state: dict[str, Any]) -> str:
    """The method a checkpoint state names (checkpoints written before methods were named: PPO)."""
    return str(state.get("method") or "ppo")


def load_checkpointed_lm(ckpt_dir: str | Path) -> tuple[Any, Any]:
    """The checkpoint's policy LM and tokenizer, to build a trainer on before :meth:`MethodTrainer.restore`
    (a LoRA checkpoint's: its adapter on the base directory it names)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = Path(ckpt_dir)
    if (ckpt / "policy" / ADAPTER_CONFIG).is_file():
        base_dir = read_state(ckpt).get("lora_base_dir")
        if not base_dir or not Path(base_dir).is_dir():
            raise ValueError(f"{ckpt}: a LoRA checkpoint whose base model directory {base_dir!r} is gone")
        lm = load_adapter_lm(base_dir, ckpt / "policy", trainable=True)
        return lm, AutoTokenizer.from_pretrained(ckpt / TOKENIZER_DIR)
    return AutoModelForCausalLM.from_pretrained(ckpt / "policy"), AutoTokenizer.from_pretrained(ckpt / "policy")


def _is_peft(lm: Any) -> bool:
    """A PEFT model, told without importing peft (a full fine-tuning run never needs it)."""
    return type(lm).__module__.startswith("peft.") and is_peft_model(lm)


def _loaded_from(lm: Any) -> Path | None:
    """The local directory ``lm`` was loaded from (transformers records it), if it still holds a model."""
    path = Path(str(getattr(lm, "name_or_path", "") or ""))
    return path if str(path) not in ("", ".") and (path / "config.json").is_file() else None
