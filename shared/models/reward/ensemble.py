"""A conservative reward from an ensemble of scalar heads (Coste et al. 2023).

A MiniLM reward version may carry K scalar heads on one shared backbone
(``RewardHeadConfig.ensemble_size``; K = 1 is the single head every version had
before). One backbone pass gives all K member scores; the score the platform
trains and gates on is the conservative one,

    score = mean(members) - k * std(members),   k = RewardHeadConfig.conservative_k,

so a response the members disagree about (where the reward model is least
trustworthy, and a policy optimising it drifts to first) earns less. ``std``
is the population standard deviation (divide by K): with K = 1 it is 0 and the
conservative score is the single head's score, exactly.

Members differ in two ways, both fixed by the training seed:
- each head's initial weights (its own generator, :func:`member_init_seed`);
- each member's training data: a bootstrap resample of the comparisons
  (:func:`bootstrap_counts`: n draws with replacement, as counts per pair, so
  the pair weights of the Bradley-Terry loss carry it). K = 1 trains on the
  comparisons as they are, as before.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

DEFAULT_CONSERVATIVE_K = 1.0
# Spread of the extra heads when a trained head is widened into an ensemble:
# enough that bootstrap training pulls the members apart, small next to the
# trained head's weights (MiniLM's mean-pooled features have norm ~1-3).
WIDEN_NOISE_STD = 0.02


def conservative_scores(members: torch.Tensor, k: float) -> torch.Tensor:
    """mean - k * std over the last axis (members); [..., K] -> [...]."""
    return member_mean(members) - k * member_std(members)


def member_mean(members: torch.Tensor) -> torch.Tensor:
    """Mean over the last axis (members)."""
    return members.mean(dim=-1)


def member_std(members: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over the last axis (0 for one member)."""
    return members.std(dim=-1, correction=0)


def member_init_seed(seed: int, member: int) -> int:
    """Seed of member ``member``'s head initialisation under training seed ``seed``."""
    return seed * 1_000_003 + member


def bootstrap_counts(n_pairs: int, member: int, seed: int) -> list[int]:
    """How often each of ``n_pairs`` pairs is drawn in member ``member``'s bootstrap
    resample (n draws with replacement; sums to ``n_pairs``); deterministic in
    (seed, member), so every data-parallel rank draws the same resample."""
    if n_pairs < 1:
        raise ValueError(f"bootstrap_counts needs at least one pair, got {n_pairs}")
    rng = random.Random(f"bootstrap-{seed}-{member}")
    counts = [0] * n_pairs
    for _ in range(n_pairs):
        counts[rng.randrange(n_pairs)] += 1
    return counts


def member_weights(
    pair_weights: Sequence[float] | None, n_pairs: int, ensemble_size: int, seed: int
) -> list[list[float]] | None:
    """Per-member weights of each pair, shape [n_pairs][K], each member's column
    normalised to mean 1: the pair's own weight (fair-share caps; 1 when None)
    times its bootstrap count. None for a single head without pair weights (the
    plain unweighted loss, as before ensembles)."""
    if ensemble_size == 1:
        if pair_weights is None:
            return None
        return [[float(w)] for w in pair_weights]
    base = [1.0] * n_pairs if pair_weights is None else [float(w) for w in pair_weights]
    columns = []
    for member in range(ensemble_size):
        raw = [w * c for w, c in zip(base, bootstrap_counts(n_pairs, member, seed))]
        total = sum(raw)
        if total <= 0:  # every drawn pair has weight 0: fall back to the pair weights alone
            raw, total = list(base), sum(base)
        columns.append([x * n_pairs / total for x in raw])
    return [list(row) for row in zip(*columns)]


def ensemble_bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over members of each member's (weighted) Bradley-Terry loss.
    ``chosen``/``rejected``: [batch, K]; ``weights``: [batch, K] or None."""
    losses = -torch.nn.functional.logsigmoid(chosen - rejected)
    if weights is not None:
        losses = losses * weights
    return losses.mean()


def describe_score(ensemble_size: int, conservative_k: float) -> str:
    """What a reward version's score is, for people and lineage notes."""
    if ensemble_size <= 1:
        return "single head"
    return f"conservative: mean - {conservative_k:g} * std of {ensemble_size} heads"


@torch.no_grad()
def score_members(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64):
    """Member scores [n, K] of (prompt, response) pairs, in order (K = 1 for a single head)."""
    from shared.models.reward.encoding import encoded_batches

    model.eval()
    rows = [model.member_scores(**batch) for batch in encoded_batches(model, tokenizer, prompts, responses, batch_size)]
    return torch.cat(rows) if rows else torch.zeros((0, model.ensemble_size))


def resize_ensemble(model, ensemble_size: int, conservative_k: float, seed: int) -> None:
    """Give a MiniLM RewardModel ``ensemble_size`` heads, in place, keeping what it learnt:
    the first heads stay; shrinking to one head keeps the members' mean (a linear
    head, so exactly the ensemble's mean score); each added head is the current
    heads' mean plus small noise from its own seed (WIDEN_NOISE_STD), so the
    members start from the trained reward and the bootstrap resamples pull them
    apart. Records ``ensemble_size`` and ``conservative_k`` in the head config."""
    from dataclasses import replace

    old = model.head
    if not isinstance(old, torch.nn.Linear):
        raise ValueError("only a MiniLM reward model (minilm-scalar-head) can carry an ensemble of heads")
    with torch.no_grad():
        mean_w, mean_b = old.weight.mean(dim=0), old.bias.mean()
        weight = torch.empty(ensemble_size, old.in_features, dtype=old.weight.dtype)
        bias = torch.empty(ensemble_size, dtype=old.bias.dtype)
        if ensemble_size == 1:
            weight[0], bias[0] = mean_w, mean_b
        for member in range(ensemble_size if ensemble_size > 1 else 0):
            if member < old.out_features:
                weight[member], bias[member] = old.weight[member], old.bias[member]
                continue
            generator = torch.Generator().manual_seed(member_init_seed(seed, member))
            noise = torch.randn(old.in_features, generator=generator, dtype=weight.dtype) * WIDEN_NOISE_STD
            weight[member], bias[member] = mean_w + noise, mean_b
        head = torch.nn.Linear(old.in_features, ensemble_size)
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    head.requires_grad_(old.weight.requires_grad)
    model.head = head
    model.head_config = replace(model.head_config, ensemble_size=ensemble_size, conservative_k=conservative_k)
