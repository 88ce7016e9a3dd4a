"""Settings left at their declared defaults are fitted to a pretrained policy's size;
what the operator changed, and a toy policy's settings, are kept."""

from __future__ import annotations

import dataclasses

import torch
from safetensors.torch import save_file

from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
from services.trainer.methods.size_defaults import (
    PRETRAINED_DEFAULTS,
    PRETRAINED_MIN_PARAMETERS,
    count_parameters,
    fit_model_size,
)


def test_a_pretrained_policy_gets_an_adapter_and_one_pass_per_step():
    fitted, changes = fit_model_size(RLOOConfig(), PRETRAINED_MIN_PARAMETERS)
    for name, value in PRETRAINED_DEFAULTS.items():
        assert getattr(fitted, name) == value
    assert changes["lora_rank"] == (0, PRETRAINED_DEFAULTS["lora_rank"])
    # Every other setting is as declared.
    untouched = {f.name for f in dataclasses.fields(RLOOConfig)} - set(PRETRAINED_DEFAULTS)
    assert all(getattr(fitted, n) == getattr(RLOOConfig(), n) for n in untouched)


def test_what_the_operator_changed_is_kept_and_a_toy_is_left_alone():
    given = RLOOConfig(learning_rate=3e-6, lora_rank=8)
    fitted, changes = fit_model_size(given, 135_000_000)
    assert (fitted.learning_rate, fitted.lora_rank) == (3e-6, 8)
    assert set(changes) == {"lora_alpha", "epochs"}
    assert fit_model_size(RLOOConfig(), 5_000_000) == (RLOOConfig(), {})
    assert fit_model_size(RLOOConfig(), None) == (RLOOConfig(), {})
    # The KL weight means something else in each method: each keeps its own (DPO's is its beta).
    fitted_dpo, _ = fit_model_size(DPOConfig(), 135_000_000)
    assert fitted_dpo.lora_rank == PRETRAINED_DEFAULTS["lora_rank"] and fitted_dpo.kl_coef == DPOConfig().kl_coef


def test_parameters_are_counted_from_the_safetensors_headers(tmp_path):
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "model-00001.safetensors"))
    save_file({"c": torch.zeros(2, 2, 2)}, str(tmp_path / "model-00002.safetensors"))
    assert count_parameters(tmp_path) == 12 + 5 + 8
    assert count_parameters(tmp_path / "empty") is None
