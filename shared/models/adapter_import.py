"""`rlhf import policy ADAPTER_DIR --base vN`: a PEFT LoRA adapter into the model store.

An adapter trained elsewhere (PEFT's ``save_pretrained``: ``adapter_config.json``
+ ``adapter_model.safetensors``) becomes an adapter version on a full-weights
policy version (shared.models.adapters). Everything is checked BEFORE anything
is written: a LoRA adapter (not another PEFT method), safetensors weights (a
pickled ``adapter_model.bin`` is refused), a base that is full weights, target
modules that exist in the base, weights whose every tensor has a place of the
right shape in it, and a forward pass with finite logits. Only PEFT's two files
are stored (a model card or anything else beside them is left out).

No torch at import time: it loads only when a function runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shared.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_dir
from shared.models.hf_dir import ModelImportError
from shared.models.importer import ImportResult
from shared.models.store import ModelStore, ModelStoreError

ADAPTER_FORMAT = "peft-lora"
_SMOKE_TEXT = "How do I boil an egg? Put it in boiling water for nine minutes."

__all__ = ["ADAPTER_FORMAT", "import_adapter", "is_adapter_source"]


def is_adapter_source(source: str | Path | None) -> bool:
    """A directory PEFT wrote (it holds ``adapter_config.json``)."""
    return bool(source) and Path(str(source)).is_dir() and is_adapter_dir(str(source))


def _read_adapter_config(src: Path) -> dict[str, Any]:
    try:
        config = json.loads((src / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"{src / ADAPTER_CONFIG} is unreadable: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelImportError(f"{src / ADAPTER_CONFIG} is not a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ModelImportError(f"{src} is a {peft_type or 'unknown'} PEFT adapter: only LoRA adapters are supported")
    task = config.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise ModelImportError(f"{src} is a LoRA adapter for {task}, not for a causal LM (task_type CAUSAL_LM)")
    if not (src / ADAPTER_WEIGHTS).is_file():
        pickled = (src / "adapter_model.bin").is_file()
        raise ModelImportError(
            f"{src} has no {ADAPTER_WEIGHTS}"
            + (
                ": its adapter_model.bin is a pickle, which the model store refuses; re-save it with "
                "save_pretrained(..., safe_serialization=True)"
                if pickled
                else ""
            )  # fmt: skip
        )
    return config


def _resolve_base(store: ModelStore, base_version: str | None) -> str:
    """The full-weights version the adapter goes on: ``base_version``, else the current policy."""
    base = base_version or store.current("policy")
    if not base:
        raise ModelImportError("the store has no policy version to put the adapter on: import its base model first")
    try:
        manifest = store.manifest("policy", base)
    except ModelStoreError as exc:
        raise ModelImportError(str(exc)) from exc
    if manifest.is_adapter:
        raise ModelImportError(
            f"policy {base} is itself an adapter on {manifest.base_version}: adapters apply to full weights; "
            f"pass --base {manifest.base_version}" + ("" if base_version else " (the current policy is an adapter)")
        )
    return base


def _check_fits(base_dir: Path, src: Path) -> str:
    """Load the adapter onto the base and run it; returns the base's architecture. Raises
    ModelImportError naming what does not fit."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    architecture = type(base).__name__
    try:
        config = LoraConfig.from_pretrained(str(src))
        model = get_peft_model(base, config)
    except (ValueError, TypeError) as exc:  # PEFT: "Target modules {...} not found in the base model"
        raise ModelImportError(f"the adapter in {src} does not fit the base ({architecture}): {exc}") from exc
    weights = load_file(str(src / ADAPTER_WEIGHTS))
    try:
        result: Any = set_peft_model_state_dict(model, weights)  # torch's (missing, unexpected) keys
    except RuntimeError as exc:  # size mismatch: another model's hidden size or vocabulary
        raise ModelImportError(f"the adapter's weights do not fit the base ({architecture}): {exc}") from exc
    if result.unexpected_keys:
        raise ModelImportError(
            f"the adapter has weights for modules the base ({architecture}) lacks: {sorted(result.unexpected_keys)[:3]}"
        )
    unset = [k for k in result.missing_keys if "lora_" in k]
    if unset:
        raise ModelImportError(f"the adapter's weights leave LoRA modules of the base unset: {unset[:3]}")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    ids = tokenizer(_SMOKE_TEXT, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        logits = model(**ids).logits
    if not torch.isfinite(logits).all():
        raise ModelImportError("the base with the adapter produces non-finite logits: refusing it")
    return architecture


def import_adapter(
    store: ModelStore, src_dir: str | Path, *, base_version: str | None = None, set_current: bool = False
) -> ImportResult:
    """Check the PEFT LoRA adapter in ``src_dir`` against ``base_version`` (default: the current
    policy, if it is full weights) and store it as an adapter version on it."""
    src = Path(src_dir)
    if not is_adapter_source(src):
        raise ModelImportError(f"{src} is not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    config = _read_adapter_config(src)
    base = _resolve_base(store, base_version)
    architecture = _check_fits(store.open_version("policy", base), src)
    notes = {
        "source": "rlhf import",
        "source_path": str(src),
        "format": ADAPTER_FORMAT,
        "architecture": architecture,
        "lora_rank": str(config.get("r", "")),
        "lora_alpha": str(config.get("lora_alpha", "")),
        "lora_target_modules": json.dumps(config.get("target_modules")),
        "adapter_trained_on": str(config.get("base_model_name_or_path") or ""),
    }

    def fill(out: Path) -> None:
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):  # follows symlinks (HF cache snapshots)
            shutil.copyfile(src / name, out / name)

    manifest = store.write_version(
        "policy", fill, parent_version=store.current("policy") or "", notes=notes, base_version=base
    )
    if set_current:
        store.set_current("policy", manifest.version)
    warnings = []
    if notes["adapter_trained_on"]:
        warnings.append(
            f"the adapter says it was trained on {notes['adapter_trained_on']}; it loads onto policy {base}, "
            "but make sure that is the same model"
        )
    return ImportResult("policy", manifest.version, dict(manifest.notes), tuple(warnings), set_current)
