import dataclasses

import pytest

from shared import env
from shared.config import ConfigError, ServiceConfig, config_summary, load_config


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
