"""The loop's policy rounds run whichever --policy-method is configured, and a
restart (after kill -9) resumes that method's checkpoint exactly; a checkpoint of
another method is discarded, never loaded into the wrong trainer."""

from __future__ import annotations

import shutil

import pytest
import torch

from services.trainer.loop.policy_round import PolicyRounds
from services.trainer.policy_gradient.rloo_config import GRPOConfig, RLOOConfig
from services.trainer.policy_gradient.rloo_trainer import PolicyGradientTrainer
from shared.model_store import ModelStore

PROMPTS = ["User: how do I boil an egg?\nAssistant:", "User: hi\nAssistant:", "User: what is 2+2?\nAssistant:"]
RLOO = RLOOConfig(batch_size=2, samples_per_prompt=2, mini_batch_size=2, max_new_tokens=6, num_threads=1)
GRPO = GRPOConfig(batch_size=2, samples_per_prompt=2, mini_batch_size=2, max_new_tokens=6, num_threads=1)


def short_answer_reward(prompts, responses):
    return [-abs(len(r.split()) - 3) / 3.0 for r in responses]


@pytest.fixture()
def store(tiny_store, tmp_path):
    shutil.copytree(tiny_store, tmp_path / "store")
    return ModelStore(tmp_path / "store")


def test_an_rloo_round_resumes_after_a_restart_and_another_method_starts_over(store, tmp_path):
    checkpoint = tmp_path / "state" / "ppo-checkpoint"
    rounds = PolicyRounds(store, checkpoint, short_answer_reward, lambda _: RLOO, method="rloo")
    rounds.begin_round()
    for _ in range(2):
        stats = rounds.run_step(PROMPTS, [(PROMPTS[0], "Boil it.")])
    assert isinstance(rounds.trainer, PolicyGradientTrainer) and rounds.trainer.method == "rloo"
    assert stats.step == 1 and rounds.steps_done() == 2

    restarted = PolicyRounds(store, checkpoint, short_answer_reward, lambda _: RLOO, method="rloo")
    trainer = restarted.ensure_trainer()
    assert restarted.resumed_from_step == 2 and restarted.round_active and restarted.steps_done() == 2
    for a, b in zip(rounds.trainer.policy.state_dict().values(), trainer.policy.state_dict().values()):
        assert torch.equal(a, b)

    switched = PolicyRounds(store, checkpoint, short_answer_reward, lambda _: GRPO, method="grpo")
    assert switched.ensure_trainer().step_count == 0 and switched.resumed_from_step is None
    assert switched.state is not None and switched.state.method == "grpo"
    switched.save_policy(tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_the_critic_free_methods_refuse_data_parallel(store, tmp_path):
    with pytest.raises(ValueError, match="under torchrun use --policy-method ppo"):
        PolicyRounds(store, tmp_path / "ckpt", short_answer_reward, lambda _: RLOO, coordinator=object(), method="rloo")
