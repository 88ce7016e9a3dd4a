"""LoRA adapter versions: the unit of training and deployment on a pretrained model.

A policy version in the store is either full weights (a Hugging Face causal-LM
directory) or a **LoRA adapter on a named base version**: PEFT's own files
(``adapter_config.json`` + ``adapter_model.safetensors``) and a manifest whose
``base_version`` names the full-weights version it applies to (adapters do not
stack). The tokenizer is the base's: an adapter version carries none.

What reads a policy version goes through :func:`resolve_policy_dir`, so a
directory of either kind works wherever a model directory is taken: the base is
found beside the adapter (``<root>/policy/<base_version>``), as the store lays
them out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shared.models.store import MANIFEST, Manifest, ModelStoreError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class PolicyDirs:
    """Where a policy version's files are: the full weights, and the adapter on them if any."""

    base_dir: Path  # full weights + tokenizer
    adapter_dir: Path | None = None  # PEFT adapter files, or None for full weights
    base_version: str = ""

    @property
    def is_adapter(self) -> bool:
        return self.adapter_dir is not None


def is_adapter_dir(path: str | Path) -> bool:
    """A PEFT adapter directory (its config names the base model it was trained on)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_settings(path: str | Path) -> dict:
    """The adapter's PEFT config (rank, alpha, target modules, ...) as written by PEFT."""
    try:
        return dict(json.loads((Path(path) / ADAPTER_CONFIG).read_text()))
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"{path}: unreadable {ADAPTER_CONFIG} ({exc})") from exc


def resolve_policy_dir(model_dir: str | Path) -> PolicyDirs:
    """The full-weights directory (and adapter directory) behind ``model_dir``.

    A store version with a ``base_version`` in its manifest is an adapter whose
    base lies beside it; any other directory is full weights."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST
    if not manifest_path.is_file():
        return PolicyDirs(base_dir=model_dir)
    try:
        manifest = Manifest.from_json(manifest_path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelStoreError(f"{manifest_path} is not a valid manifest: {exc}") from exc
    if not manifest.is_adapter:
        return PolicyDirs(base_dir=model_dir)
    base_dir = model_dir.parent / manifest.base_version
    if not base_dir.is_dir():
        raise ModelStoreError(
            f"{manifest.kind} {manifest.version} is an adapter on {manifest.base_version}, "
            f"which is not in the store beside it ({base_dir})"
        )
    return PolicyDirs(base_dir=base_dir, adapter_dir=model_dir, base_version=manifest.base_version)
