"""RLOO / GRPO advantages, the KL terms and the running score normaliser, on
tensors small enough to check by hand against the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from services.trainer.methods.policy_gradient import pg_math
from services.trainer.methods.reward_normalizer import RunningMoments


def test_rloo_subtracts_the_mean_of_the_other_samples_of_the_same_prompt():
    # prompt 1: r = 1, 2, 3, 6 -> others' means (2+3+6)/3=11/3, (1+3+6)/3=10/3, 3, 2
    # prompt 2: r = 0, 0, 4, 0 -> others' means 4/3, 4/3, 0, 4/3
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 0.0])
    expected = [1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2, -4 / 3, -4 / 3, 4.0, -4 / 3]
    assert pg_math.rloo_advantages(scores, k=4).tolist() == pytest.approx(expected)


def test_rloo_with_two_samples_is_their_difference():
    assert pg_math.rloo_advantages(torch.tensor([5.0, 2.0]), k=2).tolist() == [3.0, -3.0]


def test_grpo_normalises_by_the_group_mean_and_sample_std():
    # group 1: r = 1, 2, 3, 6: mean 3, sample var ((-2)^2+(-1)^2+0+3^2)/3 = 14/3
    # group 2: r = 0, 0, 4, 0: mean 1, sample var (1+1+9+1)/3 = 4, std 2
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 0.0])
    std1 = math.sqrt(14 / 3)
    expected = [-2 / std1, -1 / std1, 0.0, 3 / std1, -0.5, -0.5, 1.5, -0.5]
    got = pg_math.grpo_advantages(scores, k=4, eps=0.0).tolist()
    assert got == pytest.approx(expected)


def test_grpo_gives_a_tied_group_zero_advantage():
    assert pg_math.grpo_advantages(torch.tensor([2.0, 2.0, 2.0]), k=3).tolist() == [0.0, 0.0, 0.0]


def test_group_sizes_are_checked():
    with pytest.raises(ValueError, match="groups of 4"):
        pg_math.rloo_advantages(torch.zeros(6), k=4)
    with pytest.raises(ValueError, match="at least 2"):
        pg_math.grpo_advantages(torch.zeros(4), k=1)


def test_the_sequence_kl_is_folded_into_each_reward():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    seq_kl = pg_math.sequence_kl(logprobs, ref, mask)  # row 1: 0.5 - 1.0 (3rd masked); row 2: 3 x 0.5
    assert seq_kl.tolist() == pytest.approx([-0.5, 1.5])
    rewards = pg_math.kl_penalized_scores(torch.tensor([2.0, 2.0]), seq_kl, kl_coef=0.1)
    assert rewards.tolist() == pytest.approx([2.05, 1.85])


def test_the_k3_kl_loss_is_the_masked_mean_of_ratio_minus_log_ratio_minus_one():
    # log pi - log pi_ref = 0.5 on token 1 and 0 on token 2 (token 3 masked):
    # k3 = exp(-0.5) - 1 + 0.5 on token 1, 0 on token 2
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, 0.0]])
    loss = pg_math.kl_loss(logprobs, ref, torch.tensor([[1, 1, 0]]))
    assert float(loss) == pytest.approx((math.exp(-0.5) - 0.5) / 2)
    loss.backward()  # d k3 / d logpi = 1 - exp(-(logpi - logref)) = 1 - exp(-0.5), halved by the mean
    assert logprobs.grad is not None
    assert logprobs.grad.tolist()[0] == pytest.approx([(1 - math.exp(-0.5)) / 2, 0.0, 0.0])


def test_token_advantages_repeat_one_value_over_the_real_tokens():
    out = pg_math.token_advantages(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def test_running_moments_merge_batches_exactly_as_welford_one_by_one():
    values = [3.0, -1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    batched, single = RunningMoments(), RunningMoments()
    batched.update(values[:3])
    batched.update(values[3:])
    for v in values:
        single.update([v])
    mean = sum(values) / 7  # 23 / 7
    var = sum((v - mean) ** 2 for v in values) / 7
    for m in (batched, single):
        assert m.count == 7 and m.mean == pytest.approx(mean) and m.std == pytest.approx(math.sqrt(var))


def test_running_moments_normalise_and_round_trip_their_state():
    m = RunningMoments()
    assert m.normalize([2.0]) == [2.0]  # nothing seen: unchanged
    m.update([1.0, 3.0])  # mean 2, population std 1
    assert m.normalize([2.0, 4.0], eps=0.0) == pytest.approx([0.0, 2.0])
    copy = RunningMoments()
    copy.load_state_dict(m.state_dict())
    assert copy == m
