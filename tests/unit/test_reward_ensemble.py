"""Reward ensembles: the conservative score's math, bootstrap members, training,
store round trip and ONNX (shared.models.reward.ensemble, minilm, format, onnx_export)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from shared.models.reward.ensemble import (
    bootstrap_counts,
    conservative_scores,
    describe_score,
    ensemble_bradley_terry_loss,
    member_mean,
    member_std,
    member_weights,
    resize_ensemble,
    score_members,
)
from shared.models.reward.format import load_reward_model, save_reward_model
from shared.models.reward.head_config import REWARD_CONFIG_FILE
from shared.models.reward.minilm import new_reward_model
from shared.models.reward.scoring import score_texts

PROMPTS = ["How do I boil an egg?", "What is the capital of France?", "Name a colour."]
RESPONSES = ["Boil it for nine minutes.", "Paris.", "Blue."]
PAIRS = [
    ("How do I boil an egg?", "Boil it for nine minutes.", "No."),
    ("What is the capital of France?", "Paris.", "I like turtles."),
    ("Name a colour.", "Blue.", "Maybe."),
    ("How do I water a fern?", "Keep the soil damp.", "Sure."),
]


# --- the math, on small tensors -------------------------------------------------------------
def test_conservative_score_is_mean_minus_k_population_std():
    members = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, 6.0]])
    # means 2, 2, 3; population stds 1, 0, 3
    assert member_mean(members).tolist() == [2.0, 2.0, 3.0]
    assert member_std(members).tolist() == [1.0, 0.0, 3.0]
    assert conservative_scores(members, 1.0).tolist() == [1.0, 2.0, 0.0]
    assert conservative_scores(members, 0.5).tolist() == [1.5, 2.0, 1.5]
    assert conservative_scores(members, 0.0).tolist() == [2.0, 2.0, 3.0]


def test_one_member_is_its_own_conservative_score():
    members = torch.tensor([[0.25], [-1.5]])
    assert member_std(members).tolist() == [0.0, 0.0]
    assert conservative_scores(members, 2.0).tolist() == [0.25, -1.5]


def test_ensemble_loss_is_the_mean_of_member_bradley_terry_losses():
    chosen, rejected = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    expected = (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2
    assert ensemble_bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected)
    # A member weight of 0 drops that member's pair; 2 counts it twice.
    weights = torch.tensor([[2.0, 0.0]])
    assert ensemble_bradley_terry_loss(chosen, rejected, weights).item() == pytest.approx(
        2 * math.log1p(math.exp(-1.0)) / 2
    )


def test_bootstrap_resamples_are_deterministic_per_member_and_differ_between_members():
    first = bootstrap_counts(50, member=0, seed=7)
    assert sum(first) == 50 and first == bootstrap_counts(50, member=0, seed=7)
    assert first != bootstrap_counts(50, member=1, seed=7)
    assert first != bootstrap_counts(50, member=0, seed=8)
    assert 0 in first  # a resample leaves pairs out (about a third of them)


def test_member_weights_combine_pair_weights_and_bootstrap_counts():
    assert member_weights(None, 4, 1, seed=0) is None  # one plain head: the loss as before ensembles
    assert member_weights([1.0, 0.5], 2, 1, seed=0) == [[1.0], [0.5]]
    rows = member_weights([1.0, 0.0, 1.0, 1.0], 4, 3, seed=0)
    assert len(rows) == 4 and all(len(row) == 3 for row in rows)
    assert rows[1] == [0.0, 0.0, 0.0]  # a pair the fair-share caps weigh 0 stays 0 in every member
    for member in range(3):
        assert sum(row[member] for row in rows) / 4 == pytest.approx(1.0)
    counts = [bootstrap_counts(4, m, seed=0) for m in range(3)]
    for member in range(3):  # proportional to the bootstrap counts where the pair weight is 1
        kept = [(rows[i][member], counts[member][i]) for i in (0, 2, 3) if counts[member][i]]
        assert len({w / c for w, c in kept}) == 1


def test_describe_score_names_what_is_served():
    assert describe_score(1, 1.0) == "single head"
    assert describe_score(3, 1.0) == "conservative: mean - 1 * std of 3 heads"


# --- real MiniLM ensembles ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ensemble():
    model, tokenizer = new_reward_model(max_length=32, seed=3, ensemble_size=3, conservative_k=0.5)
    return model.eval(), tokenizer


def test_an_ensemble_scores_its_members_in_one_pass_and_serves_the_conservative_score(ensemble):
    model, tokenizer = ensemble
    members = score_members(model, tokenizer, PROMPTS, RESPONSES)
    assert members.shape == (3, 3)
    assert len({tuple(model.head.weight[m].tolist()) for m in range(3)}) == 3  # each head its own seed
    expected = (members.mean(dim=1) - 0.5 * members.std(dim=1, correction=0)).tolist()
    assert score_texts(model, tokenizer, PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-6)
    assert model.architecture.endswith("linearx3)")


def test_store_round_trip_keeps_every_member(ensemble, tmp_path):
    model, tokenizer = ensemble
    save_reward_model(model, tokenizer, tmp_path)
    config = json.loads((tmp_path / REWARD_CONFIG_FILE).read_text())
    assert (config["ensemble_size"], config["conservative_k"]) == (3, 0.5)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))  # safetensors only
    loaded, loaded_tokenizer = load_reward_model(tmp_path)
    assert loaded.ensemble_size == 3 and loaded.head_config == model.head_config
    assert torch.equal(
        score_members(loaded, loaded_tokenizer, PROMPTS, RESPONSES), score_members(model, tokenizer, PROMPTS, RESPONSES)
    )


def test_a_single_head_version_from_before_ensembles_still_loads(tmp_path):
    model, tokenizer = new_reward_model(max_length=32, seed=1)
    save_reward_model(model, tokenizer, tmp_path)
    path = tmp_path / REWARD_CONFIG_FILE
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("ensemble_size", "conservative_k")}
    path.write_text(json.dumps(old))
    loaded, _ = load_reward_model(tmp_path)
    assert loaded.ensemble_size == 1 and loaded.head.weight.shape == (1, model.head.in_features)
    assert score_texts(loaded, tokenizer, PROMPTS, RESPONSES) == score_texts(
        model.eval(), tokenizer, PROMPTS, RESPONSES
    )


def test_a_bad_ensemble_size_in_the_reward_config_names_the_field(ensemble, tmp_path):
    model, tokenizer = ensemble
    save_reward_model(model, tokenizer, tmp_path)
    path = tmp_path / REWARD_CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "ensemble_size": 0}))
    with pytest.raises(ValueError, match="ensemble_size"):
        load_reward_model(tmp_path)


def test_onnx_outputs_every_member_and_matches_torch_within_1e_4(ensemble, tmp_path):
    import onnxruntime as ort

    from shared.models.reward.encoding import encode_pairs
    from shared.models.reward.onnx_export import ONNX_FILE, export_verified_onnx

    model, tokenizer = ensemble
    check = export_verified_onnx(model, tokenizer, tmp_path)
    assert check.backend == "onnx" and check.max_abs_diff is not None and check.max_abs_diff <= 1e-4
    batch = encode_pairs(tokenizer, PROMPTS, RESPONSES, 32)
    (got,) = ort.InferenceSession(str(tmp_path / ONNX_FILE)).run(["scores"], {k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        expected = model.member_scores(**batch).numpy()
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_resizing_keeps_what_the_heads_learnt():
    model, tokenizer = new_reward_model(max_length=32, seed=2)
    single = score_members(model, tokenizer, PROMPTS, RESPONSES)
    resize_ensemble(model, 3, 1.0, seed=0)
    widened = score_members(model, tokenizer, PROMPTS, RESPONSES)
    assert widened.shape == (3, 3) and model.head_config.ensemble_size == 3
    assert torch.allclose(widened[:, 0], single[:, 0], atol=1e-6)  # the trained head is member 0
    assert not torch.allclose(widened[:, 1], widened[:, 2])
    resize_ensemble(model, 1, 1.0, seed=0)
    assert torch.allclose(score_members(model, tokenizer, PROMPTS, RESPONSES)[:, 0], widened.mean(dim=1), atol=1e-5)


def test_members_trained_on_their_own_resamples_become_different_heads():
    from services.trainer.supervised.reward_training import train_reward_model

    model, tokenizer = new_reward_model(max_length=32, seed=0, ensemble_size=2)
    with torch.no_grad():  # identical starts: only the bootstrap resamples can tell them apart
        model.head.weight[1] = model.head.weight[0]
    train_reward_model(
        model,
        tokenizer,
        PAIRS,
        steps=3,
        batch_size=4,
        lr=1e-4,
        head_lr=1e-2,
        trainable_layers=0,
        seed=0,
        progress=False,
    )
    assert not torch.allclose(model.head.weight[0], model.head.weight[1])
    members = score_members(model, tokenizer, PROMPTS, RESPONSES)
    assert (members[:, 0] - members[:, 1]).abs().max() > 1e-4


def test_a_reward_update_applies_the_ensemble_setting_to_a_single_head_version():
    from services.trainer.loop.reward_update import RewardUpdateSettings, apply_ensemble_settings

    model, _ = new_reward_model(max_length=32, seed=5)
    settings = RewardUpdateSettings(1, 1, 0.0, ensemble_size=3, conservative_k=0.5)
    assert apply_ensemble_settings(model, settings, "v1") == {"ensemble_size": 3, "conservative_k": 0.5}
    assert (model.ensemble_size, model.head_config.conservative_k) == (3, 0.5)
    assert apply_ensemble_settings(model, settings, "v1") == {}  # already so: nothing to tell the other ranks
