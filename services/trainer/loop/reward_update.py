"""Online reward-model updates from the ledger's comparisons.

When enough new comparisons have arrived, the current reward version is
fine-tuned on them (Bradley-Terry, services.trainer.supervised.reward_training), and the
result is kept only if its pairwise accuracy on held-out pairs does not fall
more than ``tolerance`` below the current version's on the same pairs. The
held-out pairs are the comparisons of the gate's held-out prompts
(services.trainer.loop.heldout: a hash slice, so a pair is never trained on
later), and no reward version is promoted before there are
``min_heldout_pairs`` of them.

Comparisons carry weights from the ledger's per-user caps
(services.trainer.data.fair_share): the Bradley-Terry loss and the held-out
accuracy are both weighted, so a user flooding contradicting preferences
counts at most their share in training and in the check that keeps or
discards the result.

Ensembles (shared.models.reward.ensemble): a MiniLM version is fine-tuned with
``ensemble_size`` heads (the current version's heads, widened or narrowed by
:func:`shared.models.reward.ensemble.resize_ensemble` when the setting changed), each
on its own bootstrap resample of the new comparisons, drawn from a seed derived
from the parent version. The held-out accuracy that keeps or discards the
result is the conservative score's (what the policy is trained on).

A stop request (services.trainer.stop_token) abandons the update anywhere before
its promotion begins: TrainingInterrupted, nothing stored, and the caller keeps
the comparisons for the next update.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.trainer.data.training_sets import Comparison
from services.trainer.loop.heldout import HeldoutSplit
from services.trainer.stop_token import StopToken, TrainingInterrupted

log = logging.getLogger(__name__)

Pair = tuple[str, str, str]


@dataclass(frozen=True)
class RewardUpdateSettings:
    min_new_comparisons: int
    steps: int
    tolerance: float
    batch_size: int = 16
    lr: float = 2e-5  # gentler than the bootstrap's 1e-4: this is fine-tuning a trained model
    head_lr: float = 2e-4
    trainable_layers: int = 2
    min_heldout_pairs: int = 20  # held-out comparisons needed before a promotion
    ensemble_size: int = 1  # reward heads of a MiniLM version (shared.models.reward.ensemble); 1: a single head
    conservative_k: float = 1.0  # score = mean - conservative_k * std over the heads


@dataclass(frozen=True)
class RewardCandidate:
    version: str  # the new version if promoted, else ""
    promoted: bool
    reason: str
    metrics: dict[str, float]


def as_pairs(comparisons: Sequence[Comparison]) -> list[Pair]:
    return [(c.prompt, c.chosen, c.rejected) for c in comparisons]


def pair_weights(comparisons: Sequence[Comparison]) -> list[float] | None:
    """The comparisons' weights, or None when every one counts fully."""
    weights = [c.weight for c in comparisons]
    return None if all(w == 1.0 for w in weights) else weights


def heldout_accuracy(model, tokenizer, heldout: Sequence[Comparison]) -> float:
    """Weighted pairwise accuracy on held-out comparisons."""
    from shared.models.reward.scoring import pairwise_accuracy

    return pairwise_accuracy(model, tokenizer, as_pairs(heldout), weights=pair_weights(heldout))


def bootstrap_seed(parent_version: str) -> int:
    """The seed of an update's bootstrap resamples: fixed by the parent version, so
    every data-parallel rank (and a rerun) draws the same ones."""
    return zlib.crc32(parent_version.encode())


def apply_ensemble_settings(model, settings: RewardUpdateSettings, version: str) -> dict[str, float]:
    """Resize a MiniLM model's heads to ``settings.ensemble_size`` (and record
    ``conservative_k``) when they differ; returns the settings to send to other
    ranks (empty when nothing changed). A sequence-classification model keeps its one head."""
    from shared.models.reward.ensemble import resize_ensemble
    from shared.models.reward.minilm import RewardModel

    wanted = (settings.ensemble_size, settings.conservative_k)
    if (model.ensemble_size, model.head_config.conservative_k) == wanted:
        return {}
    if not isinstance(model, RewardModel):
        if settings.ensemble_size > 1:
            log.warning(
                "reward ensembles need a MiniLM reward model; this one keeps its single head",
                extra={"version": version, "format": model.format},
            )
        return {}
    resize_ensemble(model, settings.ensemble_size, settings.conservative_k, bootstrap_seed(version))
    return {"ensemble_size": settings.ensemble_size, "conservative_k": settings.conservative_k}


def fine_tune(
    model,
    tokenizer,
    train: Sequence[Comparison],
    settings: RewardUpdateSettings,
    should_stop=None,
    *,
    version: str = "",
    coordinator=None,
) -> dict[str, float]:
    """One update's training: weighted Bradley-Terry on ``train`` (raises TrainingInterrupted).
    Under torchrun (``coordinator``) every rank takes part, on the same pairs and weights."""
    from services.trainer.supervised.reward_training import train_reward_model

    resized = apply_ensemble_settings(model, settings, version)
    training = dict(
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        head_lr=settings.head_lr,
        trainable_layers=min(settings.trainable_layers, model.n_layers),
        warmup_steps=max(1, settings.steps // 10),
        weights=pair_weights(train),
        seed=bootstrap_seed(version),
    )
    if coordinator is not None:
        # The other ranks load ``version`` as stored: they resize as this rank did.
        coordinator.reward_training(version, as_pairs(train), {**training, **resized})
    return train_reward_model(
        model,
        tokenizer,
        as_pairs(train),
        progress=False,
        should_stop=should_stop,
        parallel=coordinator.group if coordinator is not None else None,
        **training,
    )


def update_reward_model(
    store,
    promoter,
    settings: RewardUpdateSettings,
    new_comparisons: Sequence[Comparison],
    all_comparisons: Sequence[Comparison],
    split: HeldoutSplit,
    threads: int = 2,
    stop: StopToken | None = None,
    lineage: dict[str, str] | None = None,
    coordinator=None,
) -> RewardCandidate:
    """Fine-tune the current reward version; promote it through ``promoter`` if it holds up.
    Raises TrainingInterrupted (nothing stored) when ``stop`` is set before the promotion
    begins: in the held-out scoring, any training step, or before the ONNX export.
    ``lineage``: what the caller knows of the data (ledger ranges), kept in the manifest notes.
    Under torchrun (``coordinator``) every rank takes part in the fine-tuning."""
    import torch

    from shared.models.reward.ensemble import describe_score
    from shared.models.reward.format import load_reward_model, save_reward_model
    from shared.models.reward.onnx_export import ONNX_FILE, export_verified_onnx

    stop = stop or StopToken()
    torch.set_num_threads(threads)
    train = split.split_pairs(list(new_comparisons), lambda c: c.prompt)[0]
    heldout = split.split_pairs(list(all_comparisons), lambda c: c.prompt)[1]
    current = store.current("reward")
    if not train or current is None:
        return RewardCandidate("", False, "no_training_pairs" if current else "no_current_version", {})
    if len(heldout) < settings.min_heldout_pairs:
        # Not trained yet: the same comparisons are used once enough held-out ones exist.
        return RewardCandidate("", False, "heldout_too_small", {"heldout_pairs": float(len(heldout))})
    work = f"the reward update of {current} on {len(train)} new comparisons"
    model, tokenizer = load_reward_model(store.open_version("reward", current))
    # Rank 0 scores alone, so only it watches; training stops where every rank agrees (should_stop).
    with stop.watching(model, work=f"{work} (scoring the held-out pairs)"):
        current_accuracy = heldout_accuracy(model, tokenizer, heldout)
    try:
        train_metrics = fine_tune(
            model, tokenizer, train, settings, stop.is_set, version=current, coordinator=coordinator
        )
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(f"{work} ({exc})") from None
    model.requires_grad_(False)
    with stop.watching(model, work=f"{work} (scoring the held-out pairs after training)"):
        accuracy = heldout_accuracy(model, tokenizer, heldout)
    metrics = {
        **train_metrics,
        "pairwise_accuracy": accuracy,
        "previous_pairwise_accuracy": current_accuracy,
        "heldout_pairs": float(len(heldout)),
        "new_comparisons": float(len(new_comparisons)),
        # How much the per-user caps took away: 1 - (weight kept / pairs).
        "train_weight_capped_share": 1.0 - sum(c.weight for c in train) / len(train),
    }
    if accuracy < current_accuracy - settings.tolerance:
        log.warning(
            "reward candidate discarded: held-out accuracy dropped",
            extra={"accuracy": accuracy, "current_accuracy": current_accuracy, "current": current},
        )
        return RewardCandidate("", False, "accuracy_dropped", metrics)

    with tempfile.TemporaryDirectory(prefix="rlhf-reward-onnx-") as onnx_dir:
        # The reward service's default backend loads model.onnx; an architecture
        # that does not export (or disagrees with torch) is served by torch. The export
        # is not watched: it would take a stop for an export failure (and serve with torch).
        stop.raise_if_set(f"{work} (before the ONNX export)")
        onnx = export_verified_onnx(model, tokenizer, onnx_dir)
        stop.raise_if_set(f"{work} (before storing the new version)")

        def fill(out: Path) -> None:
            save_reward_model(model, tokenizer, out)
            if onnx.backend == "onnx":
                shutil.copyfile(Path(onnx_dir) / ONNX_FILE, out / ONNX_FILE)

        update = promoter.promote_new(
            "reward",
            fill,
            parent_version=current,
            eval_metrics=metrics,
            reason=f"reward fine-tuned on {len(train)} new comparisons",
            expected_current=current,
            notes={
                "source": "rlhf trainer",
                "scoring_backend": onnx.backend,
                "scoring_backend_reason": onnx.reason,
                "train_comparisons": str(len(train)),
                "reward_ensemble_size": str(model.ensemble_size),
                "reward_conservative_k": f"{model.head_config.conservative_k:g}",
                "reward_score": describe_score(model.ensemble_size, model.head_config.conservative_k),
                **(lineage or {}),
            },
        )
    return RewardCandidate(update.version, True, "passed", metrics)
