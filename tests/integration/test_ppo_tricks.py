"""The PPO settings the small-scale literature finds decisive: several samples per
prompt, running score normalisation (kept in checkpoints) and value warm-up."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.methods.ppo.ppo_trainer import PPOTrainer

PROMPTS = ["User: how do I boil an egg?\nAssistant:", "User: what is the capital of France?\nAssistant:"]


class RecordingReward:
    """10 x the share of 'e' characters; remembers the prompts it was asked about."""

    def __init__(self) -> None:
        self.prompts: list[list[str]] = []

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.prompts.append(list(prompts))
        return [10.0 * r.count("e") / max(1, len(r)) for r in responses]


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_lm_dir, AutoTokenizer.from_pretrained(tiny_lm_dir)
    torch.set_num_threads(threads)


def make_trainer(tiny_lm, reward=None, **overrides) -> PPOTrainer:
    lm_dir, tokenizer = tiny_lm
    settings = dict(batch_size=8, mini_batch_size=4, epochs=1, learning_rate=3e-3, max_new_tokens=8)
    settings.update(overrides)
    reward = reward or RecordingReward()
    return PPOTrainer(AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, reward, PPOConfig(**settings))


def test_several_samples_per_prompt_roll_each_prompt_out_k_times(tiny_lm):
    reward = RecordingReward()
    trainer = make_trainer(tiny_lm, reward, batch_size=2, samples_per_prompt=4)
    assert trainer.prompts_per_step == 2
    trainer.step(PROMPTS)
    assert reward.prompts == [[PROMPTS[0]] * 4 + [PROMPTS[1]] * 4]
    with pytest.raises(
        ValueError, match="step needs batch_size=2 prompts \\(each sampled samples_per_prompt=4 times\\), got 8"
    ):
        trainer.step(PROMPTS * 4)


def test_normalised_scores_use_the_running_moments_and_survive_a_checkpoint(tiny_lm, tmp_path):
    trainer = make_trainer(tiny_lm, batch_size=2, samples_per_prompt=4, normalize_scores=True)
    first = trainer.step(PROMPTS)
    assert abs(first.mean_score) < 1e-5  # the first batch is normalised by its own moments
    assert trainer.score_moments.count == 8
    trainer.checkpoint(tmp_path / "ckpt")
    resumed = PPOTrainer.from_checkpoint(tmp_path / "ckpt", RecordingReward())
    assert resumed.score_moments == trainer.score_moments


def test_value_warmup_moves_only_the_value_head_then_the_policy(tiny_lm, tmp_path):
    trainer = make_trainer(tiny_lm, batch_size=2, samples_per_prompt=4, value_warmup_steps=1)
    lm_before = [p.detach().clone() for p in trainer.policy.parameters()]
    head_before = [p.detach().clone() for p in trainer.model.value_head.parameters()]
    trainer.step(PROMPTS, [(PROMPTS[0], "eggs boil")])  # the ptx term waits for the warm-up too
    assert all(torch.equal(a, b) for a, b in zip(lm_before, trainer.policy.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(head_before, trainer.model.value_head.parameters()))
    trainer.checkpoint(tmp_path / "ckpt")
    assert not PPOTrainer.from_checkpoint(tmp_path / "ckpt", RecordingReward()).warming_up_value
    trainer.step(PROMPTS)
    assert not all(torch.equal(a, b) for a, b in zip(lm_before, trainer.policy.parameters()))
