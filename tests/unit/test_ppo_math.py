"""PPO arithmetic on tensors small enough to check by hand against the papers."""

from __future__ import annotations

import math

import pytest
import torch

from services.trainer.methods.ppo import ppo_math as pm
from services.trainer.methods.ppo.ppo_config import PPOConfig
from shared.config import ConfigError


def test_masked_mean_and_var_ignore_masked_entries():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert pm.masked_mean(values, mask).item() == pytest.approx(2.5)  # (1+2+3+4)/4
    assert pm.masked_mean(values, mask, dim=1).tolist() == pytest.approx([1.5, 3.5])
    # population variance of {1,2,3,4} = 1.25; Bessel-corrected = 5/3
    assert pm.masked_var(values, mask, unbiased=False).item() == pytest.approx(1.25)
    assert pm.masked_var(values, mask).item() == pytest.approx(5 / 3)


def test_masked_whiten_is_mean_0_var_1_on_masked_entries_only():
    torch.manual_seed(0)
    values = torch.randn(4, 6) * 3 + 7
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    values[mask == 0] = 1e6  # padding far away must not move the statistics
    white = pm.masked_whiten(values, mask)
    assert pm.masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert pm.masked_var(white, mask, unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert (white[mask == 0] == 0).all()
    # shift_mean=False only rescales: the mean is kept
    kept = pm.masked_whiten(values, mask, shift_mean=False)
    assert pm.masked_mean(kept, mask).item() == pytest.approx(pm.masked_mean(values, mask).item(), rel=1e-5)


def test_logprobs_and_entropy_from_logits():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [1.0, 1e-9, 1e-9]]]))
    tokens = torch.tensor([[1, 0]])
    lp = pm.logprobs_from_logits(logits, tokens)
    assert lp[0, 0].item() == pytest.approx(math.log(0.25))
    assert lp[0, 1].item() == pytest.approx(0.0, abs=1e-6)
    ent = pm.entropy_from_logits(logits)
    # H(1/2, 1/4, 1/4) = 1.5 bits = 1.5 ln 2 nats; a point mass has H = 0
    assert ent[0, 0].item() == pytest.approx(1.5 * math.log(2), rel=1e-5)
    assert ent[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_kl_estimators():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    d = logp - ref  # [ln 2, -ln 2]
    assert pm.kl_penalty(logp, ref, "k1").tolist() == pytest.approx(d.tolist())
    assert pm.kl_penalty(logp, ref, "abs").tolist() == pytest.approx(d.abs().tolist())
    assert pm.kl_penalty(logp, ref, "mse").tolist() == pytest.approx((0.5 * d**2).tolist())
    # k3 = (r - 1) - ln r with r = p_ref / p: r=1/2 -> ln2 - 1/2 ; r=2 -> 1 - ln 2
    assert pm.kl_penalty(logp, ref, "k3").tolist() == pytest.approx([math.log(2) - 0.5, 1 - math.log(2)], rel=1e-5)
    assert (pm.kl_penalty(logp, ref, "k3") >= 0).all()
    assert pm.kl_penalty(ref, ref, "k3").abs().max().item() == 0.0
    with pytest.raises(ValueError, match="unknown KL estimator"):
        pm.kl_penalty(logp, ref, "full")


def test_kl_estimators_are_unbiased_on_samples():
    # Sampling x ~ p, mean of k1 and k3 approaches KL(p || q) = sum p ln(p/q).
    torch.manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    true_kl = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 200_000, replacement=True)
    logp, logq = p.log()[x], q.log()[x]
    assert pm.kl_penalty(logp, logq, "k1").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert pm.kl_penalty(logp, logq, "k3").mean().item() == pytest.approx(true_kl, abs=0.01)


def test_per_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = pm.per_token_rewards(torch.tensor([1.0, -2.0]), kl, mask, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.25, -0.2 - 2.0, 0.0]])
    assert torch.allclose(rewards, expected)


def test_gae_matches_a_hand_computed_example():
    # gamma = 0.9, lam = 0.5, one response of 3 tokens, then padding.
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.2, 0.4, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = pm.compute_gae(r, v, mask, gamma=0.9, lam=0.5)
    # delta_2 = 1 + 0.9*0 - 0.4 = 0.6                      A_2 = 0.6
    # delta_1 = 0 + 0.9*0.4 - 0.2 = 0.16                   A_1 = 0.16 + 0.45*0.6 = 0.43
    # delta_0 = 0 + 0.9*0.2 - 0.5 = -0.32                  A_0 = -0.32 + 0.45*0.43 = -0.1265
    assert adv[0].tolist() == pytest.approx([-0.1265, 0.43, 0.6, 0.0])
    assert ret[0].tolist() == pytest.approx([-0.1265 + 0.5, 0.43 + 0.2, 0.6 + 0.4, 0.0])


def test_gae_lambda_1_gamma_1_is_monte_carlo_return_minus_value():
    r = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    v = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    mask = torch.ones(1, 4)
    adv, ret = pm.compute_gae(r, v, mask, gamma=1.0, lam=1.0)
    mc = torch.tensor([[1.2, 1.1, 1.3, 1.0]])  # reward-to-go
    assert torch.allclose(ret, mc) and torch.allclose(adv, mc - v)


def test_gae_skips_masked_holes():
    # A masked token in the middle is skipped: token 2 bootstraps from token 0's successor 2.
    r = torch.tensor([[0.0, 5.0, 1.0]])
    v = torch.tensor([[0.5, 9.0, 0.4]])
    with_hole, _ = pm.compute_gae(r, v, torch.tensor([[1, 0, 1]]), gamma=0.9, lam=0.5)
    dense, _ = pm.compute_gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.4]]), torch.ones(1, 2), 0.9, 0.5)
    assert with_hole[0, [0, 2]].tolist() == pytest.approx(dense[0].tolist())
    assert with_hole[0, 1].item() == 0.0


def test_clipped_policy_loss_takes_the_pessimistic_surrogate():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.1, 0.5 ; advantages +1, +1, -1, -1 ; eps = 0.2
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    out = pm.clipped_policy_loss(new, old, adv, mask, cliprange=0.2)
    # per-token max(-A*rho, -A*clip(rho)):
    #   A=+1, rho=1.5: max(-1.5, -1.2) = -1.2 (clipped)     A=+1, rho=0.5: max(-0.5, -0.8) = -0.5
    #   A=-1, rho=1.1: max(1.1, 1.1) = 1.1                  A=-1, rho=0.5: max(0.5, 0.8) = 0.8 (clipped)
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4)
    assert out.clipfrac.item() == pytest.approx(0.5)
    k3 = [(x - 1) - math.log(x) for x in (1.5, 0.5, 1.1, 0.5)]
    assert out.approx_kl.item() == pytest.approx(sum(k3) / 4, rel=1e-5)
    # Gradient flows only through tokens whose unclipped term was chosen.
    new.requires_grad_(True)
    pm.clipped_policy_loss(new, old, adv, mask, 0.2).loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 3] == 0
    assert new.grad[0, 1] != 0 and new.grad[0, 2] != 0


def test_clipped_policy_loss_ignores_masked_tokens():
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.1, 0.0, 5.0]])
    adv = torch.tensor([[1.0, 1.0, 100.0]])
    out = pm.clipped_policy_loss(new, old, adv, torch.tensor([[1, 1, 0]]), 0.2)
    assert out.loss.item() == pytest.approx(-(math.exp(0.1) + 1.0) / 2)
    assert out.clipfrac.item() == 0.0


def test_clipped_value_loss():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[0.5, 0.1, -0.5]])
    ret = torch.tensor([[1.0, 1.0, 1.0]])
    out = pm.clipped_value_loss(new, old, ret, torch.ones(1, 3), cliprange_value=0.2)
    # V_clip = [0.2, 0.1, -0.2]; errors unclipped [0.25, 0.81, 2.25], clipped [0.64, 0.81, 1.44]
    # max -> [0.64, 0.81, 2.25]; loss = 0.5 * mean
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 2.25) / 3)
    assert out.clipfrac.item() == pytest.approx(1 / 3)


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    ctl = pm.AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_steps=10)  # error clipped to +0.2 -> beta * (1 + 0.2 * 0.1)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl = pm.AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=4.8, n_steps=10)  # error = -0.2 -> beta * 0.98
    assert ctl.value == pytest.approx(0.1 * 0.98)
    ctl = pm.AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=6.3, n_steps=50)  # error = +0.05 -> beta * 1.025
    assert ctl.value == pytest.approx(0.1 * 1.025)
    fixed = pm.FixedKLController(0.3)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.3


def test_config_defaults_are_valid_and_bad_values_say_what_to_change():
    cfg = PPOConfig()
    assert cfg.num_mini_batches == cfg.batch_size // cfg.mini_batch_size
    with pytest.raises(ConfigError, match="mini-batch-size.*divide batch_size"):
        PPOConfig(batch_size=10, mini_batch_size=4)
    with pytest.raises(ConfigError, match="cliprange"):
        PPOConfig(cliprange=1.5)
    with pytest.raises(ConfigError, match="kl-estimator"):
        PPOConfig(kl_estimator="full")
    with pytest.raises(ConfigError, match="top-p"):
        PPOConfig(top_p=0.0)
