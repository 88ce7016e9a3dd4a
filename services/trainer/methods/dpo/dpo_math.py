"""The arithmetic of DPO and KTO, as pure functions on tensors.

Both learn from feedback directly, without a reward model or sampling: the
policy's implicit reward of a response is ``beta * log(pi(y|x) / pi_ref(y|x))``,
the log-ratio to the frozen reference summed over the response's tokens.

- DPO [DPO] raises the implicit reward of the response a user chose over the
  one they rejected: ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``;
  with label smoothing eps [cDPO] the label is trusted with probability 1 - eps.
- KTO [KTO] needs only a desirable / undesirable label per response (a thumb):
  a desirable response's value is ``lambda_D * sigmoid(beta * (r - z0))``, an
  undesirable one's ``lambda_U * sigmoid(beta * (z0 - r))``, and the loss is
  ``lambda_y - value``. The reference point ``z0`` is the batch's KL estimate
  from mismatched pairs (prompt i with response i+1), clamped at 0 and detached.

Shapes: ``(B,)`` per sequence. ``weights`` (B,) are the per-user share-cap
weights of services.trainer.data.fair_share; every mean is weighted by them.

References:
  [DPO]  Rafailov et al. 2023, "Direct Preference Optimization", eq. 7.
  [cDPO] Mitchell 2023, "A note on DPO with noisy preferences".
  [KTO]  Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def sequence_logprobs(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """log pi(response | prompt) per row: sum over the masked positions t of
    log softmax(logits[:, t])[labels[:, t]]. ``logits`` (B, T, V) must already be
    aligned so that position t predicts ``labels[:, t]``; ``mask`` (B, T) is 1
    on response tokens. logsumexp instead of log_softmax: no second (B, T, V) tensor."""
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    token_logprobs = picked - torch.logsumexp(logits, dim=-1)
    return (token_logprobs * mask.to(token_logprobs.dtype)).sum(-1)


def weighted_mean(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """sum(w * x) / sum(w); the plain mean without weights."""
    if weights is None:
        return values.mean()
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1e-12)


@dataclass
class DPOLoss:
    loss: Tensor  # scalar, weighted mean over the pairs
    losses: Tensor  # (B,)
    chosen_rewards: Tensor  # (B,) beta * (pi_c - ref_c), detached
    rejected_rewards: Tensor  # (B,) beta * (pi_r - ref_r), detached

    @property
    def margin(self) -> Tensor:
        """Implicit reward margin per pair: chosen minus rejected."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> Tensor:
        """Share of pairs whose chosen response has the higher implicit reward."""
        return (self.margin > 0).float().mean()


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    weights: Tensor | None = None,
) -> DPOLoss:
    """[DPO] eq. 7 on sequence log-probs; ``label_smoothing`` eps > 0 gives [cDPO]:
    ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return DPOLoss(
        loss=weighted_mean(losses, weights),
        losses=losses,
        chosen_rewards=(beta * (policy_chosen - ref_chosen)).detach(),
        rejected_rewards=(beta * (policy_rejected - ref_rejected)).detach(),
    )


def kto_reference_point(policy_mismatched: Tensor, ref_mismatched: Tensor) -> Tensor:
    """[KTO]'s z0: max(0, mean over mismatched pairs of log pi/pi_ref), detached.
    The pairs are (prompt i, response i+1): responses the policy was not asked
    for, so their log-ratio estimates KL(pi || pi_ref) without the label's signal."""
    return (policy_mismatched - ref_mismatched).mean().clamp(min=0).detach()


@dataclass
class KTOLoss:
    loss: Tensor  # scalar, weighted mean over the examples
    losses: Tensor  # (B,)
    rewards: Tensor  # (B,) beta * (pi - ref), detached
    desirable: Tensor  # (B,) bool
    z0: Tensor  # scalar reference point (nats), detached
    accuracy: Tensor  # share of examples on their label's side of z0 (desirable: log-ratio above it)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    z0: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    weights: Tensor | None = None,
) -> KTOLoss:
    """[KTO] eq. 8: per example ``lambda_y - v(x, y)`` with
    v = lambda_D sigmoid(beta (r - z0)) for desirable, lambda_U sigmoid(beta (z0 - r)) for
    undesirable responses, r = log pi/pi_ref (nats)."""
    z0 = z0.detach()  # a reference point, not a target: no gradient through it
    ratio = policy_logps - ref_logps
    lam = torch.where(desirable, torch.full_like(ratio, desirable_weight), torch.full_like(ratio, undesirable_weight))
    value = torch.where(desirable, torch.sigmoid(beta * (ratio - z0)), torch.sigmoid(beta * (z0 - ratio)))
    losses = lam - lam * value
    return KTOLoss(
        loss=weighted_mean(losses, weights),
        losses=losses,
        rewards=(beta * ratio).detach(),
        desirable=desirable,
        z0=z0,
        accuracy=((ratio.detach() > z0) == desirable).float().mean(),
    )
