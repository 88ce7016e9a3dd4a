"""Scoring with a reward model of either format: scores of (prompt, response) pairs and
the pairwise accuracy on (prompt, chosen, rejected) triples."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shared.models.reward.encoding import encoded_batches
from shared.models.reward.head_config import ScalarReward


@torch.no_grad()
def score_texts(
    model: ScalarReward, tokenizer, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
) -> list[float]:
    """Scores for (prompt, response) pairs, in order."""
    model.eval()
    scores: list[float] = []
    for batch in encoded_batches(model, tokenizer, prompts, responses, batch_size):
        scores.extend(model(**batch).tolist())
    return scores


@torch.no_grad()
def pairwise_accuracy(
    model: ScalarReward,
    tokenizer,
    pairs: Sequence[tuple[str, str, str]],
    *,
    batch_size: int = 64,
    weights: Sequence[float] | None = None,
) -> float:
    """Share of (prompt, chosen, rejected) where chosen scores higher; with
    ``weights`` (one per pair), the weighted share."""
    if not pairs:
        raise ValueError("pairwise_accuracy needs at least one pair")
    if weights is not None and len(weights) != len(pairs):
        raise ValueError(f"weights has {len(weights)} entries for {len(pairs)} pairs")
    prompts = [p for p, _, _ in pairs]
    chosen = score_texts(model, tokenizer, prompts, [c for _, c, _ in pairs], batch_size=batch_size)
    rejected = score_texts(model, tokenizer, prompts, [r for _, _, r in pairs], batch_size=batch_size)
    wins = [float(c > r) for c, r in zip(chosen, rejected)]
    if weights is None:
        return sum(wins) / len(pairs)
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights are all 0")
    return sum(w * x for w, x in zip(weights, wins)) / total
