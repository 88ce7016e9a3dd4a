"""Train models from data, outside the online loop: the platform's public training API.

An application (the demo included) that trains a policy or a reward model on
its own data calls this module and nothing else of ``services.trainer``; the
rest of the trainer (its sub-packages and their modules) is internal and may
change between releases. Two levels:

From a data file into the model store (what `rlhf sft --data` and
`rlhf train-reward --data` run; services.trainer.supervised.from_file):

- :func:`sft_from_file` ``(store, data_path, SftFileSettings(...), base=, set_current=)``:
  JSONL demonstrations (``{"prompt","response"}`` or ``{"messages": [...]}``) →
  a new policy version;
- :func:`reward_from_file` ``(store, data_path, RewardFileSettings(...), base=, set_current=)``:
  JSONL comparisons (``{"prompt","chosen","rejected"}``, or Anthropic HH) → a new
  reward version;
- both return a :class:`FileTrainingResult` and raise :class:`DataFileError` (every
  bad line, as ``FILE:LINE: field``) or :class:`FileTrainingError` (no base version,
  settings that do not fit the model) before anything is written.

In memory, on a model already loaded (``shared.models.policy_eval.load_policy``,
``shared.models.reward.format.load_reward_model`` / ``minilm.new_reward_model``), trained in
place; nothing is written (an app saves the result and stores it with
``shared.models.store.ModelStore.write_version``):

- :func:`sft_train` ``(model, tokenizer, [(prompt, response), ...], *, steps, batch_size, lr,
  warmup_steps=0, max_length=None, seed=0, weight_decay=0.0, progress=True)`` → metrics;
- :func:`train_reward_model` ``(model, tokenizer, [(prompt, chosen, rejected), ...], *, steps,
  batch_size, lr, head_lr=None, trainable_layers=None, warmup_steps=10, max_length=None, seed=0,
  progress=True, weights=None)`` → metrics (Bradley-Terry; ``trainable_layers`` top encoder layers
  trained, the rest frozen);
- :func:`lr_at` ``(step, total, peak, warmup)``: the warm-up + cosine learning-rate
  schedule both use, for an app's own training loop.

The training functions load torch when first used (``rlhf --help`` imports this
module through its commands and stays fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from services.trainer.data.datasets import DataFileError
from services.trainer.supervised.from_file import (
    NEW_REWARD_BASE,
    FileTrainingError,
    FileTrainingResult,
    RewardFileSettings,
    SftFileSettings,
    reward_from_file,
    sft_from_file,
)
from services.trainer.supervised.schedule import lr_at

if TYPE_CHECKING:
    from services.trainer.supervised.reward_training import train_reward_model
    from services.trainer.supervised.sft import sft_train

__all__ = [
    "DataFileError",
    "NEW_REWARD_BASE",
    "FileTrainingError",
    "FileTrainingResult",
    "RewardFileSettings",
    "SftFileSettings",
    "lr_at",
    "reward_from_file",
    "sft_from_file",
    "sft_train",
    "train_reward_model",
]

# Imported on first use: they load torch.
_LAZY = {
    "sft_train": "services.trainer.supervised.sft",
    "train_reward_model": "services.trainer.supervised.reward_training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
