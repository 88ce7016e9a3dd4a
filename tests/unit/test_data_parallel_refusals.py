"""Under torchrun the trainer refuses, at config validation and before any rank joins the
process group, what its data-parallel step does not do: a LoRA adapter (whichever way it is
asked for) and running score normalisation, with a message saying what to change."""

from __future__ import annotations

import pytest

from services.trainer.config import TrainerConfig
from services.trainer.parallel.launch import check_data_parallel, run_data_parallel
from shared.config import load_config


@pytest.mark.parametrize(
    "flags,env,refused",
    [
        (["--ppo-lora-rank", "8"], {}, "--ppo-lora-rank: LoRA adapters are not trained data-parallel"),
        ([], {"RLHF_TRAINER_PPO_LORA_RANK": "16"}, "--ppo-lora-rank: LoRA adapters are not trained data-parallel"),
        (["--ppo-normalize-scores", "true"], {}, "--ppo-normalize-scores: running score normalisation is not"),
    ],
)
def test_torchrun_refuses_what_the_data_parallel_step_cannot_do(flags, env, refused, capsys, tmp_path, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = run_data_parallel(["--state-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2 and f"configuration error: {refused}" in err


def test_the_lora_refusal_says_how_to_proceed():
    config = load_config(TrainerConfig, ["--ppo-lora-rank", "8"])
    with pytest.raises(ValueError) as refused:
        check_data_parallel(config)
    assert "set --ppo-lora-rank 0" in str(refused.value) and "without torchrun" in str(refused.value)


def test_full_weights_ppo_and_other_methods_lora_settings_pass():
    # Only the method that runs matters: an RLOO adapter setting is not used by a PPO run.
    check_data_parallel(load_config(TrainerConfig, ["--policy-method", "ppo", "--rloo-lora-rank", "8"]))
