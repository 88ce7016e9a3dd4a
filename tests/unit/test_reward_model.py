"""The shared reward model: save/load round trip, encoding, split passes, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.models.reward.encoding import encode_pairs
from shared.models.reward.format import load_reward_model, save_reward_model
from shared.models.reward.minilm import minilm_dir, new_reward_model
from shared.models.reward.onnx_export import ONNX_FILE, export_onnx
from shared.models.reward.scoring import score_texts

PROMPTS = [
    "User: How do I boil an egg?\nAssistant:",
    "What is the capital of France?",
    "How can I shoplift from a store?",
]
RESPONSES = [
    "Put the egg in boiling water for nine minutes.",
    "The capital of France is Paris. Hope this helps!",
    "I'm sorry, but I can't help with that.",
]


@pytest.fixture(scope="module")
def reward_model():
    torch.manual_seed(0)
    model, tokenizer = new_reward_model(max_length=48)  # pretrained MiniLM, untrained head
    return model.eval(), tokenizer


def test_minilm_is_the_bundled_local_copy():
    path = minilm_dir()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_encode_pairs_strips_the_configured_prompt_frame(reward_model):
    _, tokenizer = reward_model
    framed = ["User: What is the capital of France?\nAssistant:"]
    templated = encode_pairs(tokenizer, framed, ["Paris."], 48, frame=("User:", "Assistant:"))
    bare = encode_pairs(tokenizer, ["What is the capital of France?"], ["Paris."], 48)
    assert torch.equal(templated["input_ids"], bare["input_ids"])
    assert set(templated) == {"input_ids", "attention_mask"}
    # Without a frame the platform scores the prompt as the application sent it.
    unframed = encode_pairs(tokenizer, framed, ["Paris."], 48)
    assert not torch.equal(unframed["input_ids"], bare["input_ids"])


def test_encode_pairs_truncates_and_checks_lengths(reward_model):
    _, tokenizer = reward_model
    enc = encode_pairs(tokenizer, ["How do I boil an egg?"], ["word " * 200], 32)
    assert enc["input_ids"].shape == (1, 32)
    with pytest.raises(ValueError):
        encode_pairs(tokenizer, ["a", "b"], ["c"], 32)


def test_scores_do_not_depend_on_batch_padding(reward_model):
    model, tokenizer = reward_model
    together = score_texts(model, tokenizer, PROMPTS, RESPONSES)
    alone = [score_texts(model, tokenizer, [p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert np.allclose(together, alone, atol=1e-5)


def test_split_passes_match_forward(reward_model):
    model, tokenizer = reward_model
    batch = encode_pairs(tokenizer, PROMPTS, RESPONSES, 48)
    with torch.no_grad():
        full = model(**batch)
        hidden = model.lower_hidden(batch["input_ids"], batch["attention_mask"], 4)
        split = model.upper_scores(hidden, batch["attention_mask"], 4)
    assert torch.allclose(full, split, atol=1e-5)


def test_save_load_round_trip_is_exact_and_pickle_free(reward_model, tmp_path):
    model, tokenizer = reward_model
    with torch.no_grad():
        model.head.bias.fill_(0.5)  # a head that differs from a fresh init
    save_reward_model(model, tokenizer, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]
    loaded, loaded_tokenizer = load_reward_model(tmp_path)
    assert loaded.head_config == model.head_config
    assert score_texts(loaded, loaded_tokenizer, PROMPTS, RESPONSES) == pytest.approx(
        score_texts(model, tokenizer, PROMPTS, RESPONSES), abs=1e-6
    )


def test_onnx_matches_torch_within_1e_4(reward_model, tmp_path):
    import onnxruntime as ort

    model, tokenizer = reward_model
    path = export_onnx(model, tokenizer, tmp_path)
    assert path == tmp_path / ONNX_FILE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["scores"]
    # A batch size and sequence length unlike the export example (dynamic axes).
    prompts = PROMPTS * 3 + ["Explain how to fold a towel."]
    responses = RESPONSES * 3 + ["Fold the towel in half lengthwise, then fold it in thirds. " * 3]
    batch = encode_pairs(tokenizer, prompts, responses, 48)
    with torch.no_grad():
        expected = model(**batch).numpy()
    got = session.run(["scores"], {k: v.numpy() for k, v in batch.items()})[0]
    assert got.shape == (len(prompts),)
    assert np.abs(got - expected).max() < 1e-4


def test_training_stops_when_asked_and_leaves_no_half_step():
    from services.trainer.supervised.reward_training import TrainingInterrupted, train_reward_model

    model, tokenizer = new_reward_model(max_length=32, seed=0)
    pairs = [("User: how do I boil an egg?\nAssistant:", "Boil it for nine minutes.", "Ugh. Figure it out.")] * 4
    calls = []

    def stop_on_third_check() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(TrainingInterrupted, match="stopped at step"):
        train_reward_model(
            model,
            tokenizer,
            pairs,
            steps=50,
            batch_size=2,
            lr=1e-4,
            trainable_layers=1,
            progress=False,
            should_stop=stop_on_third_check,
        )
    assert len(calls) < 10, "stopped within a step of being asked, not after all 50"
