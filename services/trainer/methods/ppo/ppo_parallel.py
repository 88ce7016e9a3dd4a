"""What data parallelism changes in a PPO step (the PPOTrainer calls these when
it has a process group; one process never does).

With W ranks, each rank rolls out and scores its contiguous shard of the
global batch of prompts, with its own sampling seed. The shards are then
gathered, so every rank holds the whole scored rollout: advantages (and their
whitening) are computed over the global batch exactly as one process would.
The update walks the same shuffled minibatches on every rank (the shuffle
generator is identical); each rank runs the forward and backward pass on its
shard of each minibatch, with its loss (a token mean over its shard) scaled by
``its tokens * W / the minibatch's tokens``, so that after the gradients are
averaged over the ranks they are the gradient of the whole minibatch's token
mean: the step one process would take on the global batch, up to float
rounding.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from torch import Tensor

from services.trainer.methods.rollout import Rollout
from services.trainer.parallel.group import DataParallel, RanksFailedTogether
from services.trainer.stop_token import TrainingInterrupted


def rollout_seed(seed: int, step: int, rank: int) -> int:
    """Each rank's sampling seed for one step: different per rank, reproducible per step."""
    return zlib.crc32(f"{seed}:{step}:{rank}".encode())


def gather_rollout(group: DataParallel, shard: Rollout, scores: Tensor, pad_token_id: int) -> tuple[Rollout, Tensor]:
    """Every rank's scored shard, concatenated in rank order (i.e. in the global batch's order)."""

    def rows(tensor: Tensor, pad: float = 0, left: bool = False) -> Tensor:
        return group.all_gather_rows(tensor, pad, left)

    rollout = Rollout(
        prompts=[p for part in group.all_gather_json(shard.prompts) for p in part],
        responses=[r for part in group.all_gather_json(shard.responses) for r in part],
        query_ids=rows(shard.query_ids, pad_token_id, left=True),
        query_mask=rows(shard.query_mask, left=True),
        response_ids=rows(shard.response_ids, pad_token_id),
        response_mask=rows(shard.response_mask),
        ended_with_eos=rows(shard.ended_with_eos),
        logprobs=rows(shard.logprobs),
        ref_logprobs=rows(shard.ref_logprobs),
        values=rows(shard.values),
    )
    return rollout, rows(scores)


def my_rows(group: DataParallel, index: Tensor, token_mask: Tensor) -> tuple[Tensor, float]:
    """This rank's rows of the minibatch ``index`` and its loss scale: its tokens
    (``token_mask`` rows, all of the rollout) times W over the minibatch's tokens."""
    rows = index[group.shard(len(index))]
    total = float(token_mask[index].sum())
    return rows, float(token_mask[rows].sum()) * group.world_size / max(total, 1.0)


def score_together(group: DataParallel, score: Callable[[Rollout], Tensor], rollout: Rollout) -> Tensor:
    """``score(rollout)`` on every rank, failing on every rank if it fails on one (so no
    rank is left waiting in a collective for one that raised)."""
    error: Exception | None = None
    try:
        scores = score(rollout)
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank together
        error, scores = exc, torch.full((len(rollout),), math.nan)
    if not group.all_ok(error is None):
        if isinstance(error, TrainingInterrupted):  # rank 0 stopping (its reward call cancelled): say so
            raise error
        why = f"{type(error).__name__}: {error}" if error else "on another rank"
        raise RanksFailedTogether(f"scoring the rollout failed {why}") from error
    return scores


def global_stats(
    group: DataParallel, stats: dict[str, float], share: float, ptx_share: float, ptx: bool
) -> dict[str, float]:
    """One minibatch's statistics over every rank's shard, token-weighted as one process has
    them (each rank's value times its loss scale, averaged); ``ptx``: demonstrations were
    trained on (by some rank), else ptx_loss is NaN as in one process."""
    names = list(stats)
    # A rank without demonstrations in this minibatch (ptx_share 0) adds nothing to ptx_loss.
    scaled = [(stats[n] * ptx_share if ptx_share else 0.0) if n == "ptx_loss" else stats[n] * share for n in names]
    reduced = group.all_reduce_sum_(torch.tensor(scaled, dtype=torch.float64)) / group.world_size
    out = {name: float(value) for name, value in zip(names, reduced)}
    if not ptx:
        out["ptx_loss"] = math.nan
    return out
