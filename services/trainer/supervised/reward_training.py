"""Reward-model training with the Bradley-Terry loss on pairwise comparisons.

loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected)), as in TRL's
reward trainer; optionally weighted per pair (the online trainer down-weights
users who send more than their share of the feedback,
services.trainer.data.fair_share). Used by the bootstrap (step 3) and by the online trainer on
preferences from the feedback ledger: both call :func:`train_reward_model`
with a reward model of either format (shared.models.reward.format) and a list of
(prompt, chosen, rejected).

Two paths. The MiniLM RewardModel freezes its lower layers and caches their
output per text, so each step runs only the top layers (what makes it
affordable on a CPU). Any other reward model (an imported Hugging Face
sequence-classification model, shared.models.reward.adapter) trains the top
``trainable_layers`` blocks and everything above them (final norm, pooler,
score head) with a full forward pass per step; all parameters when
``trainable_layers`` is None or its blocks cannot be found.

An ensemble (``model.ensemble_size`` K > 1 heads, shared.models.reward.ensemble)
trains all K heads in the same steps, on the same batches, from one backbone
pass: member m's loss weighs each pair by its count in member m's bootstrap
resample of ``pairs`` (drawn from ``seed``), and the loss is the mean over
members. The shared trainable layers learn from all members; the heads
differ by their initial weights and their resample.

Data-parallel (``parallel``, under torchrun), every rank draws the same batch
and scores its contiguous shard of it; the loss is scaled by the shard's size
times W over the batch's, and gradients are averaged over the ranks before
the clip: the step one process would take on the whole batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from services.trainer.parallel.group import DataParallel
from services.trainer.stop_token import TrainingInterrupted  # raised when ``should_stop`` says stop
from services.trainer.supervised.optim_step import clipped_step, first_and_final
from services.trainer.supervised.schedule import lr_at
from shared.models.reward.encoding import encode_pairs
from shared.models.reward.ensemble import ensemble_bradley_terry_loss, member_weights
from shared.models.reward.minilm import RewardModel
from shared.models.reward.scoring import pairwise_accuracy

Pair = tuple[str, str, str]  # (prompt, chosen, rejected)


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of -log sigmoid(chosen - rejected), each pair times its weight when given.
    Weights are normalised to mean 1 over the whole training set (see
    :func:`train_reward_model`), so a batch's loss is an unbiased estimate of
    the weighted mean and a batch of light pairs takes a small step, not a full one."""
    losses = -torch.nn.functional.logsigmoid(chosen_scores - rejected_scores)
    if weights is None:
        return losses.mean()
    return (losses * weights).mean()


def _pair_scores(
    model: torch.nn.Module, tokenizer, pairs: Sequence[Pair], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected member scores [batch, K] from one forward pass over both halves."""
    prompts = [p for p, _, _ in pairs] * 2
    responses = [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    enc = encode_pairs(tokenizer, prompts, responses, max_length, frame=model.head_config.frame)
    scores = model.member_scores(**enc)
    return scores[: len(pairs)], scores[len(pairs) :]


@torch.no_grad()
def cache_frozen_hidden(
    model: RewardModel,
    tokenizer,
    texts: Sequence[tuple[str, str]],
    n_frozen: int,
    max_length: int,
    batch_size: int = 64,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> dict[tuple[str, str], torch.Tensor]:
    """Hidden states after the frozen layers for each unique (prompt, response),
    unpadded. Computed once, in eval mode (no dropout in frozen layers), so each
    step only runs the trainable top layers. Sorting by length keeps padding,
    and so wasted compute, small."""
    unique = sorted(set(texts), key=lambda t: len(t[0]) + len(t[1]))
    was_training = model.training
    model.eval()
    cache: dict[tuple[str, str], torch.Tensor] = {}
    starts = range(0, len(unique), batch_size)
    for start in tqdm(starts, desc="reward cache", disable=not progress, leave=False):
        if should_stop is not None and should_stop():
            model.train(was_training)
            raise TrainingInterrupted("stopped while caching frozen hidden states")
        chunk = unique[start : start + batch_size]
        enc = encode_pairs(
            tokenizer, [p for p, _ in chunk], [r for _, r in chunk], max_length, frame=model.head_config.frame
        )
        hidden = model.lower_hidden(enc["input_ids"], enc["attention_mask"], n_frozen)
        for row, key in enumerate(chunk):
            cache[key] = hidden[row, : int(enc["attention_mask"][row].sum())].clone()
    model.train(was_training)
    return cache


def _cached_scores(model: RewardModel, cache, keys: Sequence[tuple[str, str]], n_frozen: int) -> torch.Tensor:
    states = [cache[k] for k in keys]
    width = max(s.shape[0] for s in states)
    hidden = states[0].new_zeros((len(states), width, states[0].shape[1]))
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for row, state in enumerate(states):
        hidden[row, : state.shape[0]] = state
        mask[row, : state.shape[0]] = 1
    return model.upper_member_scores(hidden, mask, n_frozen)


def train_reward_model(
    model: torch.nn.Module,
    tokenizer,
    pairs: Sequence[Pair],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    head_lr: float | None = None,
    trainable_layers: int | None = None,
    warmup_steps: int = 10,
    max_length: int | None = None,
    seed: int = 0,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    parallel: DataParallel | None = None,
    weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place; returns loss and accuracy on the training pairs
    (first and last tenth of steps). ``should_stop`` is checked every step:
    when it returns True, TrainingInterrupted is raised (a service shutting
    down must not wait for a whole update).

    ``trainable_layers`` < all: embeddings and lower layers are frozen; for the
    MiniLM RewardModel their output is also cached per text
    (:func:`cache_frozen_hidden`), which is what makes MiniLM fine-tuning
    affordable on a CPU. Other models run the frozen layers every step.

    ``weights`` (one per pair, >= 0, not all 0): how much each pair counts in
    the loss; rescaled here to mean 1."""
    if not pairs:
        raise ValueError("train_reward_model needs at least one (prompt, chosen, rejected) pair")
    if parallel is not None and batch_size < parallel.world_size:
        raise ValueError(f"batch_size ({batch_size}) must be at least the number of ranks ({parallel.world_size})")
    # [pair][member] weights (fair-share caps times bootstrap counts), or None for one plain head.
    pair_weights = member_weights(
        _normalised_weights(weights, len(pairs)), len(pairs), getattr(model, "ensemble_size", 1), seed
    )
    max_length = max_length or model.head_config.max_length
    n_frozen = 0  # frozen MiniLM layers whose output is cached
    if trainable_layers is not None and trainable_layers < model.n_layers:
        model.freeze_lower_layers(trainable_layers)
        if isinstance(model, RewardModel):
            n_frozen = model.n_layers - trainable_layers
    cache = None
    if n_frozen:
        texts = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
        # Data-parallel, only the step loop stops (every rank at the same step).
        cache_stop = should_stop if parallel is None else None
        cache = cache_frozen_hidden(
            model, tokenizer, texts, n_frozen, max_length, progress=progress, should_stop=cache_stop
        )
    head_params = model.head_parameters()
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": body_params, "lr": lr, "peak": lr},
            {"params": head_params, "lr": head_lr or lr, "peak": head_lr or lr},
        ],
        weight_decay=0.01,
    )
    rng = random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    accuracies: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc="reward model", disable=not progress, leave=False)
    for step in bar:
        stop_now = should_stop is not None and should_stop()
        if parallel is not None:
            stop_now = parallel.main_says(stop_now)
        if stop_now:
            raise TrainingInterrupted(f"stopped at step {step} of {steps}")
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, group["peak"], warmup_steps)
        if len(order) < batch_size:
            fresh = list(range(len(pairs)))
            rng.shuffle(fresh)
            order.extend(fresh)
        order_used = order[:batch_size]
        batch = [pairs[i] for i in order_used]
        del order[:batch_size]
        share = 1.0
        if parallel is not None:
            whole, mine = len(batch), parallel.shard(len(batch))
            batch, order_used = batch[mine], order_used[mine]
            share = len(batch) * parallel.world_size / whole
        if cache is not None:
            keys = [(p, c) for p, c, _ in batch] + [(p, r) for p, _, r in batch]
            scores = _cached_scores(model, cache, keys, n_frozen)
            chosen, rejected = scores[: len(batch)], scores[len(batch) :]
        else:
            chosen, rejected = _pair_scores(model, tokenizer, batch, max_length)
        batch_weights = None
        if pair_weights is not None:
            batch_weights = torch.tensor([pair_weights[i] for i in order_used], dtype=chosen.dtype)
        loss = ensemble_bradley_terry_loss(chosen, rejected, batch_weights)
        accuracy = (chosen > rejected).float().mean().item()
        if parallel is None:
            losses.append(clipped_step(model, optimizer, loss))
        else:
            value = clipped_step(model, optimizer, share * loss, reduce_gradients=parallel.average_gradients)
            totals = parallel.all_reduce_sum_(torch.tensor([value, accuracy * share], dtype=torch.float64))
            losses.append(float(totals[0]) / parallel.world_size)
            accuracy = float(totals[1]) / parallel.world_size
        accuracies.append(accuracy)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return {
        **first_and_final(losses, "reward_loss"),
        "reward_train_accuracy_final": first_and_final(accuracies, "acc")["acc_final"],
        "reward_train_pairs": float(len(pairs)),
    }


def _normalised_weights(weights: Sequence[float] | None, n_pairs: int) -> list[float] | None:
    """``weights`` scaled to mean 1 (None stays None); ValueError naming what is wrong."""
    if weights is None:
        return None
    values = [float(w) for w in weights]
    if len(values) != n_pairs:
        raise ValueError(f"weights has {len(values)} entries for {n_pairs} pairs; give one weight per pair")
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise ValueError("weights must be finite and >= 0")
    total = sum(values)
    if total <= 0:
        raise ValueError("weights are all 0: nothing to train on")
    return [w * n_pairs / total for w in values]


__all__ = ["Pair", "TrainingInterrupted", "bradley_terry_loss", "pairwise_accuracy", "train_reward_model"]
