"""The reward scorer's request rules and its refusal to score before loading."""

from __future__ import annotations

import pytest

from services.reward.config import RewardConfig
from services.reward.scorer import RewardLimits, RewardScorer
from shared.config import ConfigError
from shared.errors import InvalidArgument, Unavailable
from shared.model_store import ModelStore


@pytest.fixture()
def scorer(tmp_path):
    return RewardScorer(ModelStore(tmp_path), RewardLimits(max_batch_size=2, max_prompt_chars=5, max_response_chars=5))


@pytest.mark.parametrize(
    "prompts,responses,field",
    [
        ([], [], "items"),
        (["a"] * 3, ["b"] * 3, "items"),
        (["a", "a"], ["b", ""], "items[1].response"),
        (["a" * 6], ["b"], "items[0].prompt"),
        (["a"], ["b" * 6], "items[0].response"),
    ],
)
def test_batch_rules_name_the_field(scorer, prompts, responses, field):
    with pytest.raises(InvalidArgument) as info:
        scorer.check_batch(prompts, responses)
    assert info.value.field == field


def test_an_empty_prompt_is_allowed_but_not_an_empty_response(scorer):
    scorer.check_pair("", "ok")
    with pytest.raises(InvalidArgument, match="^response"):
        scorer.check_pair("q", " ")


def test_nothing_is_scored_before_a_version_is_loaded(scorer):
    with pytest.raises(Unavailable):
        scorer.score(["q"], ["r"])
    with pytest.raises(Unavailable, match="no reward version"):
        scorer.load_current()


def test_config_defaults_and_validation():
    config = RewardConfig()
    assert (config.port, config.metrics_port, config.backend) == (50052, 9102, "onnx")
    with pytest.raises(ConfigError, match="--threads"):
        RewardConfig(threads=0)


def test_entry_point_help_lists_the_backend_flag():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "services.reward", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "--backend" in out.stdout and "RLHF_REWARD_BACKEND" in out.stdout
