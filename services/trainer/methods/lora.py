"""LoRA adapters in the base trainer: the policy is a PEFT model, the reference its base.

With ``lora_rank > 0`` (MethodConfig) every method trains a LoRA adapter on a frozen
base instead of all the weights. The frozen reference the KL terms pull toward is
then the SAME model with the adapter switched off (:class:`AdapterOffReference`):
one copy of the base in memory instead of two, which is what makes a pretrained
model of a few billion parameters trainable beside its reference at all.

What a store adapter version is (PEFT's files + ``manifest.base_version``) is
shared.models.adapters; this module only builds and saves the trainer's side.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from services.trainer.methods.lora_settings import target_modules
from shared.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS


def is_peft_model(lm: Any) -> bool:
    from peft import PeftModel

    return isinstance(lm, PeftModel)


def with_adapter(lm: nn.Module, rank: int, alpha: int, dropout: float, targets: str) -> Any:
    """``lm`` wrapped with a fresh LoRA adapter (B = 0: the policy starts equal to its base),
    or, when ``lm`` already is a PEFT model (an adapter version continuing), that adapter made
    trainable again: its own rank and targets win, since the weights were trained with them."""
    from peft import LoraConfig, get_peft_model

    if is_peft_model(lm):
        peft_lm: Any = lm
        peft_lm.peft_config[peft_lm.active_adapter].inference_mode = False
        for name, param in peft_lm.named_parameters():
            param.requires_grad_("lora_" in name)
        return peft_lm
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(targets), task_type="CAUSAL_LM"
    )
    try:
        with warnings.catch_warnings():  # GPT-2's Conv1D layers: PEFT sets fan_in_fan_out itself and says so
            warnings.filterwarnings("ignore", message="fan_in_fan_out", category=UserWarning)
            return get_peft_model(lm, config)
    except ValueError as exc:  # PEFT's "Target modules ... not found in the base model"
        raise ValueError(f"lora_target_modules={targets!r} does not fit {type(lm).__name__}: {exc}") from exc


class AdapterOffReference:
    """The frozen reference of a LoRA run: the policy's own PEFT model with its adapter
    switched off, so base weights are shared, never copied.

    Deliberately not an ``nn.Module``: the base trainer freezes its reference with
    ``requires_grad_(False)``, which on a module holding the PEFT model would freeze the
    adapter too. It offers what the methods, the gate and the checkpoint use of a
    reference: calling it (forward), ``generate``, ``config``, ``parameters`` and
    ``state_dict`` of the base weights. Calls run without gradients (a reference never
    learns) and are not thread-safe (the switch is on the shared model), like the trainer."""

    def __init__(self, peft_lm: Any) -> None:
        self._peft = peft_lm

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad(), self._peft.disable_adapter():
            return self._peft(*args, **kwargs)

    forward = __call__

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad(), self._peft.disable_adapter():
            return self._peft.generate(*args, **kwargs)

    @property
    def config(self) -> Any:
        return self._peft.config

    @property
    def device(self) -> torch.device:
        return self._peft.device

    def eval(self) -> AdapterOffReference:
        return self  # the trainer keeps the shared model in eval mode (no dropout) already

    def requires_grad_(self, requires_grad: bool = True) -> AdapterOffReference:
        if requires_grad:
            raise ValueError("the reference of a LoRA run is the frozen base: it cannot be made trainable")
        return self  # the base weights are frozen by PEFT; the adapter's must stay trainable

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The base's parameters under their names in the plain model (LoRA weights left out)."""
        for name, param in self._peft.get_base_model().named_parameters():
            if "lora_" not in name:
                yield name.replace(".base_layer.", "."), param

    def parameters(self) -> Iterator[nn.Parameter]:
        return (param for _, param in self.named_parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The base weights as a plain model names them (what ``save_pretrained`` of the base
        would write): the reference's weights, the same tensors the policy runs on."""
        return {
            name.replace(".base_layer.", "."): tensor
            for name, tensor in self._peft.get_base_model().state_dict().items()
            if "lora_" not in name
        }


def save_adapter(peft_lm: Any, out_dir: str | Path) -> Path:
    """PEFT's adapter files (config + safetensors weights) into ``out_dir``: an adapter version's
    payload. PEFT's generated README (a model card template) is left out."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_lm.save_pretrained(out, safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)
    if not (out / ADAPTER_CONFIG).is_file() or not (out / ADAPTER_WEIGHTS).is_file():
        raise RuntimeError(f"PEFT did not write {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} into {out}")
    return out


def load_adapter_weights(peft_lm: Any, adapter_dir: str | Path) -> None:
    """Load an adapter's saved weights into ``peft_lm`` (same rank and targets), refusing a
    file that leaves any LoRA weight unset or names weights the model lacks."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    result: Any = set_peft_model_state_dict(peft_lm, weights)  # torch's (missing, unexpected) keys
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    if unexpected:
        raise ValueError(f"{adapter_dir}: adapter weights the model has no place for: {unexpected[:3]}")


def load_adapter_lm(base_dir: str | Path, adapter_dir: str | Path, *, trainable: bool) -> Any:
    """The causal LM in ``base_dir`` with the PEFT adapter in ``adapter_dir`` on it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


def parameter_counts(lm: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (for logs and the LoRA-vs-full comparison)."""
    params = list(lm.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}
