"""--policy-method: declared once in TrainerConfig, read from a flag or the
environment, validated, and it selects which method's hyperparameters the loop gets."""

from __future__ import annotations

import dataclasses

import pytest

from services.trainer.config import TrainerConfig
from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.dpo.kto_config import KTOConfig
from services.trainer.methods.policy_gradient.grpo_config import GRPOConfig
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.methods.registry import POLICY_METHODS, build_trainer
from services.trainer.parallel.launch import run_data_parallel
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
        (["--ppo-samples-per-prompt", "0"], "--ppo-samples-per-prompt: must be >= 1"),
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
    assert POLICY_METHODS == ("ppo", "rloo", "grpo", "dpo", "kto")
    for method in POLICY_METHODS:
        config = load_config(TrainerConfig, ["--policy-method", method]).policy_config(max_positions=128)
        assert type(config).__name__ == f"{method.upper()}Config"


def test_batch_size_is_prompts_per_step_for_every_method():
    assert PPOConfig(batch_size=4, samples_per_prompt=4).prompts_per_step == 4
    assert PPOConfig(batch_size=4, samples_per_prompt=4).rollouts_per_step == 16
    assert RLOOConfig(batch_size=4, samples_per_prompt=4).rollouts_per_step == 16
    assert DPOConfig(batch_size=8, mini_batch_size=4).prompts_per_step == 8


@pytest.mark.parametrize("method,config_class", [("dpo", DPOConfig), ("kto", KTOConfig)])
def test_dpo_and_kto_have_their_own_flags_fitted_to_the_context(method, config_class):
    flags = ["--policy-method", method, f"--{method}-kl-coef", "0.3", f"--{method}-max-response-length", "40"]
    config = load_config(TrainerConfig, flags + ["--torch-threads", "3"])
    chosen = config.policy_config(max_positions=64)
    assert type(chosen) is config_class and chosen.kl_coef == 0.3 and chosen.num_threads == 3
    assert chosen.max_prompt_length == 64 - 40, "a prompt and its response must fit the context"
    assert config.policy_config().max_prompt_length == 128, "unknown context: the setting as given"
    assert config.gate_max_new_tokens == 40, "the gate samples answers as long as those trained on"
    assert load_config(TrainerConfig, []).gate_max_new_tokens == PPOConfig().max_new_tokens


def test_dpo_and_kto_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(env.TRAINER_POLICY_METHOD, "kto")
    monkeypatch.setenv("RLHF_TRAINER_KTO_DESIRABLE_WEIGHT", "1.5")
    monkeypatch.setenv("RLHF_TRAINER_KTO_FLAGS_AS_UNDESIRABLE", "false")
    monkeypatch.setenv("RLHF_TRAINER_DPO_LABEL_SMOOTHING", "0.1")
    config = load_config(TrainerConfig, [])
    kto = config.policy_config()
    assert type(kto) is KTOConfig and kto.desirable_weight == 1.5 and not kto.flags_as_undesirable
    assert config.dpo.label_smoothing == 0.1


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--dpo-label-smoothing", "0.5"], "--dpo-label-smoothing: must be in [0, 0.5)"),
        (["--kto-mini-batch-size", "5"], "--kto-mini-batch-size: must divide"),
        (["--dpo-num-threads", "2"], "unrecognized arguments: --dpo-num-threads"),  # --torch-threads sets it
    ],
)
def test_bad_dpo_and_kto_settings_are_refused_naming_the_flag(flags, named, capsys):
    with pytest.raises((ConfigError, SystemExit)) as refused:
        load_config(TrainerConfig, flags)
    message = str(refused.value) if refused.type is ConfigError else capsys.readouterr().err
    assert named in message


@pytest.mark.parametrize("method", ["rloo", "grpo", "dpo", "kto"])
def test_torchrun_refuses_the_single_process_methods_before_joining_the_group(method, capsys, tmp_path):
    code = run_data_parallel(["--policy-method", method, "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"configuration error: --policy-method: {method} runs in one process" in err


def test_every_method_config_shares_the_base_fields_without_declaring_them_again():
    from services.trainer.methods.base_config import MethodConfig
    from services.trainer.methods.registry import REGISTRY

    shared = {f.name for f in dataclasses.fields(MethodConfig)}
    for method in REGISTRY.values():
        own = set(method.config.__dict__.get("__annotations__", {}))
        assert shared <= {f.name for f in dataclasses.fields(method.config)}
        assert not own & shared - {"batch_size", "samples_per_prompt", "epochs", "kl_coef", "learning_rate"}, method
    assert RLOOConfig().kl_coef == 0.05 and GRPOConfig().kl_coef == 0.04 and DPOConfig().epochs == 1


def test_a_ppo_checkpoint_config_of_the_release_before_reads_with_the_new_names():
    saved = dataclasses.asdict(PPOConfig(batch_size=4, samples_per_prompt=4, epochs=3, kl_coef=0.2))
    saved.update(batch_size=16, ppo_epochs=saved.pop("epochs"), init_kl_coef=saved.pop("kl_coef"))  # old meaning
    assert PPOConfig.from_saved(saved) == PPOConfig(batch_size=4, samples_per_prompt=4, epochs=3, kl_coef=0.2)
    old_rloo = {**dataclasses.asdict(RLOOConfig()), "num_epochs": 3}
    del old_rloo["epochs"]
    assert RLOOConfig.from_saved(old_rloo).epochs == 3
