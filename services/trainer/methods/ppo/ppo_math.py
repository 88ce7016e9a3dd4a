"""The arithmetic of PPO for language models, as pure functions on tensors.

Shapes: ``(B, T)`` is a batch of B responses of T tokens; ``mask`` is 1 on real
response tokens and 0 on padding after EOS. Every reduction is masked, so
padding never moves a statistic.

References:
  [PPO]  Schulman et al. 2017, "Proximal Policy Optimization Algorithms".
  [GAE]  Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE".
  [Z19]  Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences".
  [K3]   Schulman 2020, "Approximating KL Divergence" (blog note).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(values * mask) / sum(mask), over ``dim`` or everything."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries; Bessel-corrected (n / (n-1)) if ``unbiased``."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) with mean and var taken over masked entries only.

    With ``shift_mean=False`` the mean is added back: only the scale changes,
    which is how rewards are whitened (their sign carries meaning). Masked-out
    entries are returned as 0.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask, unbiased=False)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """log pi(token | context): log_softmax(logits)[token], shape (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v, shape (B, T)."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    With log r = log pi_ref(x) - log pi(x):
      k1  = -log r               unbiased, can be negative per token [K3]
      abs = |log pi - log pi_ref|
      mse = 1/2 (log pi - log pi_ref)^2     (k2 in [K3], low variance, biased)
      k3  = (r - 1) - log r      unbiased, always >= 0, low variance [K3]
    """
    log_ratio = logprobs.float() - ref_logprobs.float()
    if estimator == "k1":
        return log_ratio
    if estimator == "abs":
        return log_ratio.abs()
    if estimator == "mse":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        # clamp keeps exp() finite when the policy has drifted far from the reference
        neg = (-log_ratio).clamp(max=20.0)
        return torch.expm1(neg) - neg
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1, abs, mse or k3")


def per_token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """r_t = -beta * KL_t, plus the sequence score at the last real token [Z19, eq. 2].

    ``scores`` is (B,), ``kl`` and ``mask`` are (B, T). Each row must have at
    least one real token.
    """
    mask_f = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask_f
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
    if (last < 0).any():
        raise ValueError("every response needs at least one unmasked token to carry its score")
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores.to(kl.dtype)
    return rewards


def compute_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation [GAE, eq. 16], reversed over masked tokens.

      delta_t = r_t + gamma * V_{t+1} - V_t
      A_t     = delta_t + gamma * lam * A_{t+1}
      R_t     = A_t + V_t     (the value target, "returns")

    t+1 means the next *unmasked* token; after the last one V = 0 and A = 0
    (the episode ends). Masked positions get A = R = 0. Returns (A, R).
    """
    batch, length = rewards.shape
    mask_b = mask.bool()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    next_advantage = torch.zeros_like(next_value)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        gae = delta + gamma * lam * next_advantage
        m = mask_b[:, t]
        advantages[:, t] = torch.where(m, gae, torch.zeros_like(gae))
        next_advantage = torch.where(m, gae, next_advantage)
        next_value = torch.where(m, values[:, t], next_value)
    returns = (advantages + values) * mask.to(values.dtype)
    return advantages, returns


@dataclass
class PolicyLoss:
    loss: Tensor
    clipfrac: Tensor
    approx_kl: Tensor


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> PolicyLoss:
    """PPO's clipped surrogate [PPO, eq. 7], as a loss to minimise.

      rho = exp(log pi - log pi_old)
      L   = mean_t max(-A rho, -A clip(rho, 1-eps, 1+eps))

    ``clipfrac`` is the share of tokens where the clipped term is the larger
    (the gradient is cut off there); ``approx_kl`` estimates KL(pi_old || pi)
    with k3 = (rho - 1) - log rho [K3].
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return PolicyLoss(loss=loss, clipfrac=clipfrac, approx_kl=approx_kl)


@dataclass
class ValueLoss:
    loss: Tensor
    clipfrac: Tensor


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> ValueLoss:
    """L_V = 1/2 mean_t max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-eps).

    Clipping the value update like the policy one keeps a single bad batch
    from dragging the value head far from its rollout-time predictions.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_err = (values - returns).square()
    clipped_err = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_err > unclipped_err).float(), mask)
    return ValueLoss(loss=loss, clipfrac=clipfrac)


class FixedKLController:
    """beta stays what it was set to."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        del current_kl, n_steps


class AdaptiveKLController:
    """Proportional controller of [Z19, eq. 2]:

      e_t      = clip(KL_t / KL_target - 1, -0.2, 0.2)
      beta_t+1 = beta_t (1 + K_beta e_t),   K_beta = n_steps / horizon

    KL above target raises beta (pulls the policy back), below lowers it.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
