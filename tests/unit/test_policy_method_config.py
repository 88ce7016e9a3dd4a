"""--policy-method: declared once in TrainerConfig, read from a flag or the
environment, validated, and it selects which method's hyperparameters the loop gets."""

from __future__ import annotations

import pytest

from services.trainer.config import TrainerConfig
from services.trainer.loop.policy_methods import POLICY_METHODS, build_trainer
from services.trainer.policy_gradient.rloo_config import GRPOConfig, RLOOConfig
from services.trainer.ppo.ppo_config import PPOConfig
from shared import env
from shared.config import ConfigError, load_config


def test_ppo_stays_the_default_method():
    config = load_config(TrainerConfig, [])
    assert config.policy_method == "ppo" and type(config.policy_config()) is PPOConfig


@pytest.mark.parametrize("method,config_class", [("rloo", RLOOConfig), ("grpo", GRPOConfig)])
def test_the_flag_selects_the_method_and_its_own_settings(method, config_class):
    config = load_config(TrainerConfig, ["--policy-method", method, f"--{method}-samples-per-prompt", "8"])
    chosen = config.policy_config(max_positions=64)
    assert type(chosen) is config_class and chosen.samples_per_prompt == 8
    assert chosen.num_threads == config.torch_threads and chosen.max_prompt_length == 64 - chosen.max_new_tokens


def test_the_environment_selects_the_method(monkeypatch):
    monkeypatch.setenv(env.TRAINER_POLICY_METHOD, "grpo")
    monkeypatch.setenv("RLHF_TRAINER_GRPO_KL_COEF", "0.5")
    config = load_config(TrainerConfig, [])
    assert config.policy_method == "grpo" and config.policy_config().kl_coef == 0.5


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--policy-method", "a2c"], "--policy-method"),
        (["--rloo-samples-per-prompt", "1"], "--rloo-samples-per-prompt: must be >= 2"),
        (["--grpo-mini-batch-size", "5"], "--grpo-mini-batch-size: must divide"),
        (["--ppo-samples-per-prompt", "3"], "--ppo-samples-per-prompt: must divide batch_size"),
    ],
)
def test_bad_method_settings_are_refused_naming_the_flag(flags, named, capsys):
    with pytest.raises((ConfigError, SystemExit)) as refused:
        load_config(TrainerConfig, flags)
    message = str(refused.value) if refused.type is ConfigError else capsys.readouterr().err
    assert named in message


def test_every_method_the_flag_accepts_can_be_built():
    with pytest.raises(ValueError, match="unknown policy method 'a2c'"):
        build_trainer("a2c", None, None, None, None)
    assert POLICY_METHODS == ("ppo", "rloo", "grpo")


def test_ppo_prompts_per_step_follow_samples_per_prompt():
    assert PPOConfig(batch_size=16, samples_per_prompt=4).prompts_per_step == 4
    assert RLOOConfig(batch_size=4, samples_per_prompt=4).rollouts_per_step == 16
