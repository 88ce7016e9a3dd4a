"""A reward model cloned from a (tiny Llama) policy: LoRA + score head train, the merged
model scores as the adapter did and round-trips through the reward format the service loads."""

from __future__ import annotations

import pytest
import torch

from services.trainer.supervised.api import train_reward_model
from shared.models.reward.format import load_reward_model, reward_format, save_reward_model
from shared.models.reward.policy_clone import clone_policy_as_reward
from shared.models.reward.scoring import pairwise_accuracy, score_texts
from tests.foreign_models import build_tiny_llama

PAIRS = [
    ("<|user|>\nWhat is the capital of France?\n<|assistant|>\n", "The capital of France is Paris.", "Sorry, I can't."),
    ("<|user|>\nHow do I boil an egg?\n<|assistant|>\n", "Put the egg in boiling water.", "Sorry, I can't."),
    ("<|user|>\nHow do I water a fern?\n<|assistant|>\n", "Keep the soil damp.", "Sorry, I can't help."),
]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-policy"), seed=1)


def test_a_fresh_clone_scores_every_answer_alike_and_trains_only_adapter_and_head(policy_dir):
    torch.set_num_threads(1)
    model, tokenizer = clone_policy_as_reward(policy_dir, lora_rank=4, lora_alpha=8)
    scores = score_texts(model, tokenizer, [p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS])
    assert scores == [0.0, 0.0, 0.0]  # zeroed head: every first margin is 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert model.head_parameters() and all("modules_to_save" in n for n in trainable if "lora_" not in n)
    top_only, _ = clone_policy_as_reward(policy_dir, lora_rank=4, lora_alpha=8, lora_layers=1)
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in top_only.named_parameters() if "lora_" in n}
    assert adapted == {"1"}  # the tiny policy's top block of two


def test_the_merged_clone_learns_the_pairs_and_round_trips_through_the_served_format(policy_dir, tmp_path):
    torch.set_num_threads(1)
    model, tokenizer = clone_policy_as_reward(policy_dir, lora_rank=4, lora_alpha=8, seed=2)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_reward_model(
        model, tokenizer, PAIRS, steps=30, batch_size=3, lr=1e-2, head_lr=1e-2, warmup_steps=1, progress=False
    )
    assert pairwise_accuracy(model, tokenizer, PAIRS) == 1.0
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)
    prompts, responses = [p for p, _, _ in PAIRS] * 2, [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS]
    adapter_scores = score_texts(model, tokenizer, prompts, responses)

    merged = model.merged()
    save_reward_model(merged, tokenizer, tmp_path / "reward")
    assert reward_format(tmp_path / "reward") == "hf-sequence-classification"
    loaded, loaded_tokenizer = load_reward_model(tmp_path / "reward")
    assert loaded.architecture == "LlamaForSequenceClassification"
    served = score_texts(loaded, loaded_tokenizer, prompts, responses)
    assert served == pytest.approx(adapter_scores, abs=1e-4)
