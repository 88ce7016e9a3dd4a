"""Defaults by the policy's size: the settings a method leaves at their declared default
are fitted to the model it trains.

Every method's declared defaults were tuned on the demo's 2-layer toy (a few million
parameters, full fine-tuning at lr 1e-4). On a pretrained model they reward-hack: on
SmolLM2-135M, full fine-tuning with RLOO at those defaults drove the KL to the reference
from 0 to 33.5 nats in 5 steps (budget 20) while the reward rose (issue 19). So from
:data:`PRETRAINED_MIN_PARAMETERS` on, a setting the operator did not change is replaced by
the value in :data:`PRETRAINED_DEFAULTS`: a LoRA adapter instead of all weights (one copy
of the base in memory, an adapter version to promote) and one pass over each step's rows.
Each method keeps its own KL weight (their meanings differ: a per-token penalty, a
per-sequence one, DPO's beta). What rests on measurement: the reward hacking above, and LoRA's one
copy of the base and 0.64-0.70x peak RSS (docs/BENCHMARKS.md, "Trainer step: LoRA adapter vs full
fine-tuning"); the learning rate is the toy's 1e-4, not yet swept on a pretrained model.

"Did not change" means equal to the declared default: a setting given explicitly with the
toy's value is fitted too; ``--policy-size-defaults false`` keeps every declared default.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")

# Below this the policy is a toy trained from scratch here; from it, a pretrained model.
PRETRAINED_MIN_PARAMETERS = 50_000_000
PRETRAINED_DEFAULTS: dict[str, Any] = {
    "lora_rank": 16,
    "lora_alpha": 32,
    "learning_rate": 1e-4,
    "epochs": 1,
}


def fit_model_size(config: C, n_parameters: int | None) -> tuple[C, dict[str, tuple[Any, Any]]]:
    """``config`` with the settings left at their declared defaults fitted to a policy of
    ``n_parameters`` (None: unknown, nothing changes), and what changed: name -> (old, new)."""
    if n_parameters is None or n_parameters < PRETRAINED_MIN_PARAMETERS:
        return config, {}
    fields = {f.name: f for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    changes: dict[str, tuple[Any, Any]] = {}
    for name, value in PRETRAINED_DEFAULTS.items():
        field = fields.get(name)
        if field is None:
            continue
        current = getattr(config, name)
        if current == field.default and current != value:
            changes[name] = (current, value)
    if not changes:
        return config, {}
    return dataclasses.replace(config, **{k: new for k, (_, new) in changes.items()}), changes  # type: ignore[type-var]


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters in a model directory's safetensors files, read from their headers (no
    weights loaded); None when it has none."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            total += count
    return total
