"""Imported sequence-classification reward models behind the shared reward-model interface:
loading, the two input encodings, save/load, and Bradley-Terry training's plain path."""

from __future__ import annotations

import json

import pytest
import torch

from shared.models.importer import import_reward
from shared.models.prompting import encode_prompt
from shared.models.reward.adapter import SequenceClassificationReward
from shared.models.reward.encoding import encode_pairs, uses_text_pairs
from shared.models.reward.format import load_reward_model, save_reward_model
from shared.models.reward.head_config import REWARD_CONFIG_FILE
from shared.models.reward.scoring import pairwise_accuracy, score_texts
from shared.models.store import ModelStore
from tests.foreign_models import build_tiny_seq_cls_reward

PROMPTS = ["<|user|>\nHow do I boil an egg?\n<|assistant|>\n", "What is the capital of France?", ""]
RESPONSES = ["Put the egg in boiling water for nine minutes.", " Paris.", "Hello, how are you today?"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The store dirs of an imported Llama-style and BERT-style reward model."""
    root = tmp_path_factory.mktemp("adapter")
    store = ModelStore(root / "store")
    dirs = {}
    for arch in ("llama", "bert"):
        src = build_tiny_seq_cls_reward(root / arch, arch=arch, with_pad_token=arch == "bert", seed=3)
        dirs[arch] = store.open_version("reward", import_reward(store, src).version)
    return dirs


def test_llama_style_rewards_read_prompt_then_response_tokens(imported):
    model, tokenizer = load_reward_model(imported["llama"])
    assert isinstance(model, SequenceClassificationReward) and not uses_text_pairs(tokenizer)
    assert json.loads((imported["llama"] / REWARD_CONFIG_FILE).read_text())["format"] == "hf-sequence-classification"
    batch = encode_pairs(tokenizer, PROMPTS, RESPONSES, 256)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        # The prompt as the policy sees it (one BOS), then the response as written.
        expected = encode_prompt(tokenizer, prompt) + tokenizer(response, add_special_tokens=False)["input_ids"]
        length = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :length].tolist() == expected
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()  # padded on the right


def test_llama_style_truncation_cuts_the_longer_side_first(imported):
    _, tokenizer = load_reward_model(imported["llama"])
    prompt, response = "How do I boil an egg?", "Boil it. " * 100
    batch = encode_pairs(tokenizer, [prompt], [response], 24)
    prompt_ids = encode_prompt(tokenizer, prompt)
    assert batch["input_ids"].shape == (1, 24)
    assert batch["input_ids"][0, : len(prompt_ids)].tolist() == prompt_ids  # the question survives


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_scores_do_not_depend_on_batch_padding_and_match_the_raw_model(imported, arch):
    model, tokenizer = load_reward_model(imported[arch])
    together = score_texts(model, tokenizer, PROMPTS, RESPONSES)
    alone = [score_texts(model, tokenizer, [p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert together == pytest.approx(alone, abs=1e-5)
    with torch.no_grad():
        if arch == "bert":  # a BERT text pair with its token types, as the tokenizer makes it
            raw = [
                model.model(**tokenizer(p.strip(), r.strip(), return_tensors="pt")).logits[0, 0].item()
                for p, r in zip(PROMPTS, RESPONSES)
            ]
        else:
            raw = [
                model.model(
                    input_ids=torch.tensor(
                        [encode_prompt(tokenizer, p) + tokenizer(r, add_special_tokens=False)["input_ids"]]
                    )
                )
                .logits[0, 0]
                .item()
                for p, r in zip(PROMPTS, RESPONSES)
            ]
    assert together == pytest.approx(raw, abs=1e-5)
    assert max(together) - min(together) > 1e-3  # the pairs score differently: a real check


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_save_load_round_trip_keeps_the_format_and_scores(imported, arch, tmp_path):
    model, tokenizer = load_reward_model(imported[arch])
    with torch.no_grad():
        model.head_parameters()[0].mul_(2.0)  # differs from what was imported
    save_reward_model(model, tokenizer, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]
    loaded, loaded_tokenizer = load_reward_model(tmp_path)
    assert isinstance(loaded, SequenceClassificationReward) and loaded.head_config == model.head_config
    assert score_texts(loaded, loaded_tokenizer, PROMPTS, RESPONSES) == pytest.approx(
        score_texts(model, tokenizer, PROMPTS, RESPONSES), abs=1e-6
    )


def test_training_the_top_layer_leaves_the_lower_ones_and_learns_the_pairs(imported):
    from services.trainer.supervised.reward_training import train_reward_model

    model, tokenizer = load_reward_model(imported["llama"])
    assert model.n_layers == 2
    pairs = [
        (f"How do I {verb}?", f"To {verb}, start slowly and follow the steps.", "No.")
        for verb in ("boil an egg", "water a fern", "fold a towel", "tie a knot")
    ]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    start_accuracy = pairwise_accuracy(model, tokenizer, pairs)
    metrics = train_reward_model(
        model,
        tokenizer,
        pairs,
        steps=40,
        batch_size=4,
        lr=3e-3,
        head_lr=3e-3,
        trainable_layers=1,
        warmup_steps=2,
        progress=False,
    )
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert {n for n in changed if "layers.1." in n} and {"model.score.weight", "model.model.norm.weight"} <= changed
    assert not {n for n in changed if "layers.0." in n or "embed_tokens" in n}
    assert metrics["reward_loss_final"] < metrics["reward_loss_first"]
    assert pairwise_accuracy(model, tokenizer, pairs) == 1.0 and start_accuracy < 1.0


class LengthDependentReward(SequenceClassificationReward):
    """Traces to a graph that computes something else: the branch on the input
    length is fixed at export time."""

    def forward(self, input_ids, attention_mask):
        scores = super().forward(input_ids, attention_mask)
        return scores + 1.0 if input_ids.shape[1] > 20 else scores


def test_an_onnx_graph_that_disagrees_with_torch_is_not_kept(imported, tmp_path):
    from shared.models.reward.onnx_export import ONNX_FILE, export_verified_onnx

    model, tokenizer = load_reward_model(imported["llama"])
    good = export_verified_onnx(model, tokenizer, tmp_path / "good")
    assert good.backend == "onnx" and good.max_abs_diff <= 1e-4 and (tmp_path / "good" / ONNX_FILE).is_file()
    wrong = LengthDependentReward(model.model, model.head_config)
    check = export_verified_onnx(wrong, tokenizer, tmp_path / "wrong")
    assert check.backend == "torch" and "differ from torch" in check.reason and check.max_abs_diff > 0.5
    assert not (tmp_path / "wrong" / ONNX_FILE).exists()


def test_the_scorer_serves_with_torch_when_the_manifest_says_so(imported, tmp_path):
    from services.reward.scorer import load_reward_version

    model, tokenizer = load_reward_model(imported["llama"])
    store = ModelStore(tmp_path / "store")
    version = store.write_version(
        "reward",
        lambda out: save_reward_model(model, tokenizer, out),
        notes={"scoring_backend": "torch", "scoring_backend_reason": "checked at import"},
    )
    loaded = load_reward_version(store, version.version, "onnx", threads=1)
    assert loaded.backend.name == "torch" and loaded.architecture == "LlamaForSequenceClassification"
    assert loaded.score(PROMPTS, RESPONSES) == pytest.approx(
        score_texts(model, tokenizer, PROMPTS, RESPONSES), abs=1e-6
    )
