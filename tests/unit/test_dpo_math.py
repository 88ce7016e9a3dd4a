"""DPO and KTO arithmetic on tensors small enough to check by hand against the papers."""

from __future__ import annotations

import math

import pytest
import torch

from services.trainer.methods.dpo import dpo_math as dm
from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.dpo.kto_config import KTOConfig
from shared.config import ConfigError


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_sequence_logprob_sums_the_response_tokens_only():
    # Position 0: uniform over 3 tokens -> log(1/3). Position 1: probs (1/4, 1/2, 1/4), label 1 -> log(1/2).
    # Position 2 is masked out: its huge logit on the label must not count.
    logits = torch.log(torch.tensor([[[1.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1e-9, 1e-9, 1.0]]]))
    labels = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[1, 1, 0]])
    expected = math.log(1 / 3) + math.log(1 / 2)
    assert dm.sequence_logprobs(logits, labels, mask).tolist() == pytest.approx([expected])
    # A second row where only position 2 counts: log(1 / (1 + 2e-9)) ~ 0.
    both = dm.sequence_logprobs(logits.repeat(2, 1, 1), labels.repeat(2, 1), torch.tensor([[1, 1, 0], [0, 0, 1]]))
    assert both.tolist() == pytest.approx([expected, 0.0], abs=1e-6)


def test_dpo_loss_is_eq7_of_rafailov_et_al():
    # h = (pi_c - ref_c) - (pi_r - ref_r) = (-1 + 1.5) - (-2 + 1.5) = 1; beta = 0.5.
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-2.0])
    rc, rr = torch.tensor([-1.5]), torch.tensor([-1.5])
    out = dm.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)))  # -log sigmoid(0.5) = 0.474077
    assert out.chosen_rewards.tolist() == pytest.approx([0.25]) and out.rejected_rewards.tolist() == pytest.approx(
        [-0.25]
    )
    assert out.margin.tolist() == pytest.approx([0.5]) and out.accuracy.item() == 1.0
    # The paper's gradient: d loss / d log pi(y_c) = -beta * sigmoid(r_r - r_c) = -0.5 * sigmoid(-0.5).
    out.loss.backward()
    assert pc.grad.tolist() == pytest.approx([-0.5 * sigmoid(-0.5)])


def test_dpo_loss_starts_at_log2_with_label_smoothing_and_weights():
    same = torch.tensor([-3.0, -4.0])
    assert dm.dpo_loss(same, same, same, same, beta=0.1).loss.item() == pytest.approx(math.log(2))
    # Conservative DPO (eps = 0.1): 0.9 * -log sigmoid(beta h) + 0.1 * -log sigmoid(-beta h), beta h = 0.5.
    pc, pr, ref = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5])
    smoothed = dm.dpo_loss(pc, pr, ref, ref, beta=0.5, label_smoothing=0.1).loss.item()
    assert smoothed == pytest.approx(0.9 * math.log(1 + math.exp(-0.5)) + 0.1 * math.log(1 + math.exp(0.5)))
    # Weighted mean over pairs: the second pair (h = -1, loss log(1 + e^0.5)) counts half.
    out = dm.dpo_loss(
        torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), torch.full((2,), -1.5), torch.full((2,), -1.5),
        beta=0.5, weights=torch.tensor([1.0, 0.5]),
    )  # fmt: skip
    expected = (math.log(1 + math.exp(-0.5)) + 0.5 * math.log(1 + math.exp(0.5))) / 1.5
    assert out.loss.item() == pytest.approx(expected) and out.accuracy.item() == 0.5


def test_kto_reference_point_is_the_clamped_detached_mismatched_kl():
    ref = torch.tensor([-2.0, -2.0])
    assert dm.kto_reference_point(torch.tensor([-1.0, -1.0]), ref).item() == pytest.approx(1.0)
    assert dm.kto_reference_point(torch.tensor([-1.0, -3.0]), ref).item() == 0.0  # mean 0
    assert dm.kto_reference_point(torch.tensor([-3.0, -3.0]), ref).item() == 0.0  # mean -1, clamped at 0
    policy = torch.tensor([-1.0, -1.0], requires_grad=True)
    assert not dm.kto_reference_point(policy, ref).requires_grad


def test_kto_loss_is_eq8_of_ethayarajh_et_al():
    # log-ratios r = (1, -0.5); z0 = 0.2; beta = 0.5; lambda_D = 1, lambda_U = 2.
    policy = torch.tensor([-1.0, -1.0], requires_grad=True)
    ref = torch.tensor([-2.0, -0.5])
    z0 = torch.tensor(0.2, requires_grad=True)  # detached inside: no gradient may reach it
    out = dm.kto_loss(policy, ref, torch.tensor([True, False]), z0, 0.5, desirable_weight=1.0, undesirable_weight=2.0)
    desirable = 1 - sigmoid(0.5 * (1 - 0.2))  # lambda_D - lambda_D sigmoid(beta (r - z0))
    undesirable = 2 * (1 - sigmoid(0.5 * (0.2 + 0.5)))  # lambda_U - lambda_U sigmoid(beta (z0 - r))
    assert out.losses.tolist() == pytest.approx([desirable, undesirable])
    assert out.loss.item() == pytest.approx((desirable + undesirable) / 2)
    assert out.rewards.tolist() == pytest.approx([0.5, -0.25]) and out.accuracy.item() == 1.0
    out.loss.backward()
    assert z0.grad is None
    # Raising a desirable response's log-prob lowers the loss; raising an undesirable one's raises it.
    assert policy.grad[0] < 0 < policy.grad[1]
    # Weights: the undesirable example at weight 0.25 -> (d + 0.25 u) / 1.25.
    weighted = dm.kto_loss(
        policy.detach(), ref, torch.tensor([True, False]), torch.tensor(0.2), 0.5, 1.0, 2.0, torch.tensor([1.0, 0.25])
    )
    assert weighted.loss.item() == pytest.approx((desirable + 0.25 * undesirable) / 1.25)


def test_configs_refuse_bad_values_naming_the_flag():
    with pytest.raises(ConfigError, match="--kl-coef"):
        DPOConfig(kl_coef=0)
    with pytest.raises(ConfigError, match="--label-smoothing"):
        DPOConfig(label_smoothing=0.5)
    with pytest.raises(ConfigError, match="--mini-batch-size"):
        KTOConfig(batch_size=8, mini_batch_size=3)
    with pytest.raises(ConfigError, match="--undesirable-weight"):
        KTOConfig(undesirable_weight=0)
    config = KTOConfig(ptx_coef=0)
    assert config.ptx_coef == 0 and config.kl_coef == 0.1 and config.flags_as_undesirable
    with pytest.raises(AttributeError):
        config.kl_coef = 1.0  # type: ignore[misc]


def test_fit_context_cuts_prompts_so_prompt_and_response_fit_the_window():
    config = DPOConfig(max_prompt_length=128, max_response_length=64)
    fitted = config.fit_context(max_positions=128, num_threads=2)
    assert (fitted.max_prompt_length, fitted.max_response_length, fitted.num_threads) == (64, 64, 2)
    assert isinstance(fitted, DPOConfig) and fitted.kl_coef == config.kl_coef
    assert KTOConfig().fit_context(max_positions=None).max_prompt_length == KTOConfig().max_prompt_length
