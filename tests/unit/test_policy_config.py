"""PolicyConfig: flags, env, validation, and ``python -m services.policy --help``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.policy.config import PolicyConfig
from shared.config import ConfigError, load_config


def test_defaults_and_ports():
    config = load_config(PolicyConfig, [])
    assert (config.port, config.metrics_port) == (50051, 9101)
    assert config.engine_settings.max_batch_size == 32


def test_flag_beats_env(monkeypatch):
    monkeypatch.setenv("RLHF_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("RLHF_POLICY_MODEL_DIR", "/models/x")
    config = load_config(PolicyConfig, ["--max-batch-size", "4"])
    assert config.max_batch_size == 4 and config.model_dir == "/models/x"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--max-batch-size", "0"], "--max-batch-size: must be >= 1"),
        (["--stream-interval", "0"], "--stream-interval: must be >= 1"),
        (["--default-top-p", "0"], "--default-top-p"),
        (["--default-max-new-tokens", "600"], "--max-new-tokens-cap (512)"),
        (["--max-return-sequences", "64"], "--max-batch-size (32)"),
    ],
)
def test_bad_settings_are_refused(argv, says):
    with pytest.raises(ConfigError) as info:
        load_config(PolicyConfig, argv)
    assert says in str(info.value)


def test_help_lists_settings_with_their_env_vars():
    out = subprocess.run(
        [sys.executable, "-m", "services.policy", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "--model-dir" in out and "RLHF_POLICY_MODEL_DIR" in out and "--max-new-tokens-cap" in out
