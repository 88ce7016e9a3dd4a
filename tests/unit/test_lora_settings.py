"""The LoRA settings every policy method shares (MethodConfig): a flag and a variable per
method, full fine-tuning by default, and bad values refused naming the flag."""

from __future__ import annotations

import pytest

from services.trainer.config import TrainerConfig
from services.trainer.methods.dpo.kto_config import KTOConfig
from services.trainer.methods.lora_settings import ALL_LINEAR, target_modules, target_modules_problem
from services.trainer.methods.registry import POLICY_METHODS
from shared.config import ConfigError, load_config


def test_every_method_defaults_to_full_fine_tuning():
    config = load_config(TrainerConfig, [])
    for method in POLICY_METHODS:
        settings = config.method_config(method)
        assert settings.lora_rank == 0 and settings.lora_target_modules == ALL_LINEAR


@pytest.mark.parametrize("method", POLICY_METHODS)
def test_each_method_reads_its_lora_flags(method):
    flags = [
        f"--{method}-lora-rank",
        "8",
        f"--{method}-lora-alpha",
        "32",
        f"--{method}-lora-target-modules",
        "q_proj,v_proj",
    ]
    settings = load_config(TrainerConfig, ["--policy-method", method, *flags]).policy_config(max_positions=128)
    assert (settings.lora_rank, settings.lora_alpha, settings.lora_target_modules) == (8, 32, "q_proj,v_proj")


def test_the_environment_sets_lora(monkeypatch):
    monkeypatch.setenv("RLHF_TRAINER_DPO_LORA_RANK", "16")
    monkeypatch.setenv("RLHF_TRAINER_DPO_LORA_DROPOUT", "0.05")
    settings = load_config(TrainerConfig, ["--policy-method", "dpo"]).policy_config()
    assert settings.lora_rank == 16 and settings.lora_dropout == 0.05


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--ppo-lora-rank", "-1"], "--ppo-lora-rank: must be >= 0"),
        (["--rloo-lora-alpha", "0"], "--rloo-lora-alpha: must be > 0"),
        (["--grpo-lora-dropout", "1"], "--grpo-lora-dropout: must be in [0, 1)"),
        (["--kto-lora-target-modules", ","], "--kto-lora-target-modules: must be"),
        (["--dpo-lora-target-modules", "q proj"], "--dpo-lora-target-modules: module names are"),
    ],
)
def test_bad_lora_settings_are_refused_naming_the_flag(flags, named, capsys):
    with pytest.raises((ConfigError, SystemExit)) as refused:
        load_config(TrainerConfig, flags)
    message = str(refused.value) if refused.type is ConfigError else capsys.readouterr().err
    assert named in message


def test_target_modules_parse_as_peft_takes_them():
    assert target_modules(" all-linear ") == ALL_LINEAR
    assert target_modules("q_proj, v_proj,") == ["q_proj", "v_proj"]
    assert target_modules_problem("model.layers.0.q_proj") is None


def test_a_checkpoint_config_from_before_lora_reads_as_full_fine_tuning():
    saved = {k: v for k, v in KTOConfig().__dict__.items() if not k.startswith("lora_")}
    assert KTOConfig.from_saved(saved).lora_rank == 0
