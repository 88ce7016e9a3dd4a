"""Crash-safe policy-trainer checkpoints without pickle (every method writes them alike).

``torch.save`` of an optimizer state dict is a pickle, which the project
never writes or loads. An optimizer's state is tensors (Adam's moments and
step counts) plus a little structure (param-group hyperparameters), so the
tensors go to ``optimizer.safetensors`` under keys ``state.<param>.<name>``
and the structure to ``optimizer.json``. RNG states are uint8 tensors and go
to safetensors too. A checkpoint directory is written under a temporary name
and renamed into place, so a crash mid-write leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json, with an error naming the file when it is missing or bad."""
    path = Path(ckpt_dir) / STATE_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable trainer checkpoint state ({exc})") from exc


def save_served_policy(lm: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """The causal LM alone (safetensors + config + tokenizer): what the policy service serves.
    Every policy method's ``save_policy`` writes through this one path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def save_optimizer(optimizer: torch.optim.Optimizer, out_dir: Path) -> None:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_idx, param_state in state["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"state.{param_idx}.{name}"] = value.detach().contiguous().clone()
            else:
                scalars.setdefault(str(param_idx), {})[name] = value
    save_file(tensors, str(out_dir / OPTIMIZER_TENSORS))
    meta = {"param_groups": state["param_groups"], "scalar_state": scalars}
    (out_dir / OPTIMIZER_JSON).write_text(json.dumps(meta, indent=1))


def load_optimizer(optimizer: torch.optim.Optimizer, in_dir: Path) -> None:
    meta = json.loads((in_dir / OPTIMIZER_JSON).read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(in_dir / OPTIMIZER_TENSORS)).items():
        _, param_idx, name = key.split(".", 2)
        state.setdefault(int(param_idx), {})[name] = value
    for param_idx, extra in meta["scalar_state"].items():
        state.setdefault(int(param_idx), {}).update(extra)
    groups = meta["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):  # JSON has no tuples
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)  # directories cannot be atomically swapped; keep the window tiny
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
