import dataclasses
import importlib
from pathlib import Path

import pytest

import services
from shared import env
from shared.config import ConfigError, config_parser, config_summary, load_config, nested, setting
from shared.service_config import ServiceConfig


def test_defaults_without_flags_or_env(monkeypatch):
    monkeypatch.delenv(env.PORT, raising=False)
    cfg = load_config(ServiceConfig, [])
    assert cfg.port == 50050
    assert cfg.grace_period_s < 30, "grace period must stay below Kubernetes' default 30 s"


def test_flag_beats_env_beats_default(monkeypatch):
    monkeypatch.setenv(env.PORT, "6000")
    monkeypatch.setenv(env.KAFKA, "broker:9092")
    cfg = load_config(ServiceConfig, ["--port", "7000"])
    assert cfg.port == 7000
    assert cfg.kafka == "broker:9092"


def test_config_is_frozen():
    cfg = ServiceConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_invalid_value_names_the_flag():
    with pytest.raises(ConfigError, match="--port: must be in 0..65535"):
        ServiceConfig(port=70000)


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(env.PORT, "not-a-number")
    with pytest.raises(ConfigError, match=env.PORT):
        load_config(ServiceConfig, [])


def test_bool_flags_and_env(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class WithBool(ServiceConfig):
        verbose: bool = dataclasses.field(default=False, metadata={"help": "x", "env": "RLHF_TEST_VERBOSE"})

    assert load_config(WithBool, ["--verbose"]).verbose is True
    monkeypatch.setenv("RLHF_TEST_VERBOSE", "yes")
    assert load_config(WithBool, []).verbose is True


def test_summary_masks_secrets():
    summary = config_summary(ServiceConfig(auth_token="s3cret"))
    assert summary["auth_token"] == "***"
    assert "s3cret" not in repr(summary)


def test_help_lists_env_vars(capsys):
    with pytest.raises(SystemExit):
        load_config(ServiceConfig, ["--help"])
    out = capsys.readouterr().out
    assert env.KAFKA in out and "--metrics-port" in out


@dataclasses.dataclass(frozen=True)
class PercentConfig(ServiceConfig):
    """A config whose help texts hold literal percent signs."""

    share: float = setting(0.95, "keep 95% of it (100% = all); not %(prog)s")


def test_a_percent_sign_in_a_help_text_is_printed_as_written():
    text = config_parser(PercentConfig, prog="percent")[0].format_help()
    assert "keep 95% of it (100% = all); not %(prog)s" in " ".join(text.split())


SERVICES = sorted(p.parent.name for p in Path(services.__file__).parent.glob("*/__main__.py"))


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_prints_its_help(service, capsys):
    """What ``python -m services.<service> --help`` runs: its main, through the real parser."""
    entry = importlib.import_module(f"services.{service}.__main__")
    with pytest.raises(SystemExit) as exited:
        entry.main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and f"python -m services.{service}" in out and "--log-level" in out


def test_every_service_is_found():
    assert {"feedback", "openai_api", "policy", "reward", "trainer"} <= set(SERVICES)


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--ppo-ptx-batch-size", "0"], "--ppo-ptx-batch-size: must be >= 1"),
        (["--ppo-policy-loss-coef", "-1"], "--ppo-policy-loss-coef: must be >= 0"),
        (["--ppo-mini-batch-size", "5"], "--ppo-mini-batch-size: must divide"),
    ],
)
def test_trainer_names_its_own_flag_when_ppo_config_refuses_a_value(flags, named):
    from services.trainer.config import TrainerConfig

    with pytest.raises(ConfigError) as refused:
        load_config(TrainerConfig, flags)
    assert str(refused.value).startswith(named)


def test_a_renamed_setting_keeps_its_old_flag_and_variable_with_a_warning(monkeypatch, caplog):
    from typing import ClassVar

    from shared.config import Renamed

    @dataclasses.dataclass(frozen=True)
    class Inner:
        renamed: ClassVar[tuple[Renamed, ...]] = (Renamed("old_epochs", "epochs"),)
        epochs: int = setting(1, "passes")

    @dataclasses.dataclass(frozen=True)
    class Outer(ServiceConfig):
        renamed: ClassVar[tuple[Renamed, ...]] = (Renamed("old_steps", "steps", "RLHF_TEST_OLD_STEPS"),)
        steps: int = setting(2, "steps", env="RLHF_TEST_STEPS")
        inner: Inner = nested(Inner, env_prefix="RLHF_TEST_INNER_")

    with caplog.at_level("WARNING", logger="shared.config"):
        config = load_config(Outer, ["--old-steps", "5", "--inner-old-epochs", "3"])
    assert (config.steps, config.inner.epochs) == (5, 3)
    assert "--old-steps is deprecated (renamed --steps)" in caplog.text
    assert "--inner-old-epochs is deprecated (renamed --inner-epochs)" in caplog.text

    monkeypatch.setenv("RLHF_TEST_OLD_STEPS", "6")
    monkeypatch.setenv("RLHF_TEST_INNER_OLD_EPOCHS", "4")
    caplog.clear()
    with caplog.at_level("WARNING", logger="shared.config"):
        config = load_config(Outer, [])
    assert (config.steps, config.inner.epochs) == (6, 4)
    assert "RLHF_TEST_OLD_STEPS is deprecated (renamed RLHF_TEST_STEPS)" in caplog.text
    assert "RLHF_TEST_INNER_OLD_EPOCHS is deprecated (renamed RLHF_TEST_INNER_EPOCHS)" in caplog.text

    # The new name wins; the old one is ignored, with a warning; --help lists only the new one.
    monkeypatch.setenv("RLHF_TEST_STEPS", "7")
    caplog.clear()
    with caplog.at_level("WARNING", logger="shared.config"):
        assert load_config(Outer, ["--old-steps", "5"]).steps == 7
    assert "--old-steps is deprecated and ignored" in caplog.text
    help_text = config_parser(Outer)[0].format_help()
    assert "--steps" in help_text and "--old-steps" not in help_text


def test_the_trainer_still_reads_the_ppo_names_of_the_policy_round_settings(monkeypatch):
    from services.trainer.config import TrainerConfig

    monkeypatch.setenv(env.TRAINER_PPO_STEPS_PER_ROUND, "3")
    config = load_config(TrainerConfig, ["--ppo-min-prompts", "4", "--ppo-ppo-epochs", "5", "--dpo-beta", "0.2"])
    assert (config.policy_steps_per_round, config.policy_min_prompts) == (3, 4)
    assert config.ppo.epochs == 5 and config.dpo.kl_coef == 0.2
