"""The arithmetic of critic-free policy gradients (RLOO, GRPO), as pure functions.

Rollouts of one step are grouped: the k samples of a prompt sit next to each
other (rows ``g*k .. g*k + k-1``), so ``scores.view(-1, k)`` has one prompt per
row. Every response gets one advantage (outcome supervision): the same value
for each of its tokens.

References:
  [RLOO] Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
         Optimization for Learning from Human Feedback in LLMs", eq. 6.
  [GRPO] Shao et al. 2024, "DeepSeekMath", section 4.1 (outcome supervision)
         and eq. 4 (the k3 KL estimator as a loss term).
  [K3]   Schulman 2020, "Approximating KL Divergence".
"""

from __future__ import annotations

import torch
from torch import Tensor

from services.trainer.methods.ppo import ppo_math as pm


def grouped(scores: Tensor, k: int) -> Tensor:
    """(N,) -> (N/k, k): one row per prompt; N must be a multiple of k."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {tuple(scores.shape)}")
    if k < 1 or scores.numel() % k:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {k} samples per prompt")
    return scores.view(-1, k)


def rloo_advantages(scores: Tensor, k: int) -> Tensor:
    """Leave-one-out baseline [RLOO, eq. 6]: A_i = r_i - mean_{j != i} r_j, (N,).

    Each sample is compared with the mean of the other k-1 samples of its
    prompt, an unbiased baseline since it does not depend on sample i.
    Equivalently A_i = k/(k-1) * (r_i - mean_j r_j).
    """
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got {k}")
    groups = grouped(scores.float(), k)
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    return (groups - others_mean).reshape(-1)


def grpo_advantages(scores: Tensor, k: int, eps: float = 1e-4) -> Tensor:
    """Group-normalised advantage [GRPO, 4.1.2]: A_i = (r_i - mean(r)) / (std(r) + eps), (N,).

    mean and std are over the k samples of the prompt; std is the sample
    standard deviation (Bessel-corrected, as ``torch.std`` and TRL's GRPO
    take it). A group whose samples all scored the same gets A = 0.
    """
    if k < 2:
        raise ValueError(f"GRPO needs at least 2 samples per prompt, got {k}")
    groups = grouped(scores.float(), k)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def sequence_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """KL(pi || pi_ref) of each response, (N,): the k1 estimate log pi - log pi_ref
    summed over its real tokens (unbiased for the sequence KL)."""
    return (pm.kl_penalty(logprobs, ref_logprobs, "k1") * mask.to(torch.float32)).sum(dim=1)


def kl_penalized_scores(scores: Tensor, seq_kl: Tensor, kl_coef: float) -> Tensor:
    """r_i - beta * KL_i: the KL penalty folded into each response's reward, as
    RLOO does (one reward per sequence, [RLOO] section 3)."""
    return scores.float() - kl_coef * seq_kl.float()


def token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """Broadcast one advantage per response to each of its real tokens, (N, T)."""
    return advantages.float().unsqueeze(1) * mask.to(torch.float32)


def kl_loss(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """GRPO's KL term [GRPO, eq. 4]: the mean over real tokens of k3 =
    pi_ref/pi - log(pi_ref/pi) - 1 >= 0 [K3]; differentiable in ``logprobs``."""
    return pm.masked_mean(pm.kl_penalty(logprobs, ref_logprobs, "k3"), mask)
