"""RLOO and GRPO end to end on a tiny random GPT-2: each learns a programmatic
reward without a critic, the ptx term works as in PPO, and checkpoints resume exactly."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.methods.policy_gradient.grpo_config import GRPOConfig
from services.trainer.methods.policy_gradient.grpo_trainer import GRPOTrainer
from services.trainer.methods.policy_gradient.pg_config import PolicyGradientConfig
from services.trainer.methods.policy_gradient.pg_trainer import PolicyGradientTrainer
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
from services.trainer.methods.policy_gradient.rloo_trainer import RLOOTrainer
from services.trainer.methods.rollout import repeat_prompts

TRAINERS: dict[type, type] = {RLOOConfig: RLOOTrainer, GRPOConfig: GRPOTrainer}

PROMPTS = [
    "User: how do I boil an egg?\nAssistant:",
    "User: what is the capital of France?\nAssistant:",
    "User: how do I water a plant?\nAssistant:",
    "User: tell me how to pick a lock.\nAssistant:",
]


def letter_e_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """10 x the share of characters that are 'e': dense enough for a random policy to find."""
    return [10.0 * r.count("e") / max(1, len(r)) for r in responses]


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only contends (see test_ppo_trainer)
    yield tiny_lm_dir, AutoTokenizer.from_pretrained(tiny_lm_dir)
    torch.set_num_threads(threads)


def make_trainer(tiny_lm, config_class: type[PolicyGradientConfig], **overrides) -> PolicyGradientTrainer:
    lm_dir, tokenizer = tiny_lm
    settings = dict(batch_size=4, samples_per_prompt=4, mini_batch_size=8, learning_rate=3e-3, max_new_tokens=12)
    settings.update(overrides)
    config = config_class(**settings)
    return TRAINERS[config_class](AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, letter_e_reward, config)


@pytest.mark.parametrize("config_class", [RLOOConfig, GRPOConfig], ids=["rloo", "grpo"])
def test_the_method_increases_the_reward_without_a_critic(tiny_lm, config_class):
    trainer = make_trainer(tiny_lm, config_class, kl_coef=0.01)
    history = [trainer.step(PROMPTS) for _ in range(30)]
    scores = [s.mean_score for s in history]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.5, f"reward did not improve: {[round(s, 2) for s in scores]}"
    for s in history:
        for name in ("mean_score", "kl", "policy_loss", "entropy", "approx_kl", "grad_norm"):
            assert math.isfinite(getattr(s, name)), (name, s)
        assert math.isnan(s.value_loss) and 0.0 <= s.clipfrac <= 1.0
    assert history[0].kl == 0.0 and history[-1].kl > 0.0  # starts at the reference, then drifts
    assert trainer.step_count == 30


def test_a_step_samples_each_prompt_k_times_in_consecutive_rows(tiny_lm):
    trainer = make_trainer(tiny_lm, RLOOConfig, batch_size=2, samples_per_prompt=3, mini_batch_size=3)
    rollout = trainer.rollout(repeat_prompts(PROMPTS[:2], 3))  # a step repeats each prompt k times
    assert rollout.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    assert torch.equal(rollout.logprobs, rollout.ref_logprobs)
    with pytest.raises(ValueError, match="batch_size=2 prompts"):
        trainer.step(PROMPTS[:3])


def test_policy_loss_coef_zero_leaves_only_the_ptx_term(tiny_lm):
    trainer = make_trainer(tiny_lm, GRPOConfig, policy_loss_coef=0.0, kl_coef=0.0)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    trainer.step(PROMPTS)  # no demonstrations: nothing to learn from
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
    stats = trainer.step(PROMPTS, [(PROMPTS[0], "eggs are boiled in water")])
    assert math.isfinite(stats.ptx_loss)
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


@pytest.mark.parametrize("config_class", [RLOOConfig, GRPOConfig], ids=["rloo", "grpo"])
def test_checkpoint_restore_resumes_bit_for_bit(tiny_lm, tmp_path, config_class):
    trainer = make_trainer(tiny_lm, config_class, normalize_scores=True, missing_eos_penalty=1.0)
    demos = [(PROMPTS[0], "eggs"), (PROMPTS[1], "Paris")]
    trainer.step(PROMPTS, demos)
    trainer.checkpoint(tmp_path / "ckpt")
    expected = trainer.step(PROMPTS, demos)  # before the restore: sampling uses torch's global generator
    resumed = TRAINERS[config_class].from_checkpoint(tmp_path / "ckpt", letter_e_reward)
    assert resumed.config == trainer.config and resumed.method == trainer.method and resumed.step_count == 1
    assert resumed.score_moments.count == 16
    got = resumed.step(PROMPTS, demos)
    assert resumed.score_moments == trainer.score_moments
    for name in ("mean_score", "kl", "policy_loss", "clipfrac", "entropy", "ptx_loss", "grad_norm"):
        assert getattr(got, name) == getattr(expected, name), name
    for (name, a), b in zip(trainer.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), name
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_checkpoint_of_another_method_is_refused(tiny_lm, tmp_path):
    make_trainer(tiny_lm, RLOOConfig).checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="a rloo checkpoint cannot resume a grpo trainer"):
        make_trainer(tiny_lm, GRPOConfig).restore(tmp_path / "ckpt")
