"""`rlhf sft --data` and `rlhf train-reward --data` end to end on a real store: the tiny GPT-2
fixture as policy v1, the bundled MiniLM reward model as reward v1, real training, real files."""

from __future__ import annotations

import json
import shutil

import pytest

from rlhf_cli.main import main
from shared.models.store import ModelStore, sha256_file

ANSWERS = {
    "boil an egg": "Put the egg in boiling water for nine minutes.",
    "water a plant": "Water the soil until it is damp, not soaked.",
    "find the capital of France": "The capital of France is Paris.",
}
HH_SHARED = "\n\nHuman: I need help.\n\nAssistant: Sure, with what?\n\nHuman: How do I {task}?\n\nAssistant:"


def demonstration_lines(n: int = 40) -> list[dict]:
    tasks = list(ANSWERS)
    return [
        {"prompt": f"User: how do I {tasks[i % 3]}? (asked {i} times)\nAssistant:", "response": ANSWERS[tasks[i % 3]]}
        for i in range(n)
    ]


def comparison_lines(n: int = 24) -> list[dict]:
    """TRL lines and Anthropic HH lines mixed."""
    lines = []
    for i in range(n):
        task = list(ANSWERS)[i % 3]
        if i % 2:
            lines.append({"prompt": f"How do I {task}? ({i})", "chosen": ANSWERS[task], "rejected": "No."})
        else:
            shared = HH_SHARED.format(task=f"{task} ({i})")
            lines.append({"chosen": shared + " " + ANSWERS[task], "rejected": shared + " I won't tell you."})
    return lines


def write_jsonl(path, lines) -> str:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def copy_dir(src):
    def fill(out):
        for path in src.iterdir():
            if path.is_file():
                shutil.copy2(path, out / path.name)

    return fill


def store_entries(store: ModelStore, kind: str) -> set[str]:
    """Everything in the kind's directory: a leftover temporary dir would show here."""
    return {p.name for p in store.kind_dir(kind).iterdir()}


@pytest.fixture()
def policy_store(tiny_lm_dir, tmp_path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", copy_dir(tiny_lm_dir))
    store.set_current("policy", "v1")
    return store


@pytest.fixture(scope="module")
def reward_v1_dir(tmp_path_factory):
    from shared.models.reward.format import save_reward_model
    from shared.models.reward.minilm import new_reward_model

    model, tokenizer = new_reward_model(max_length=32)
    return save_reward_model(model, tokenizer, tmp_path_factory.mktemp("reward-v1"))


@pytest.fixture()
def reward_store(reward_v1_dir, tmp_path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    store.write_version("reward", copy_dir(reward_v1_dir))
    store.set_current("reward", "v1")
    return store


SFT_FLAGS = ["--steps", "12", "--batch-size", "4", "--lr", "3e-3", "--heldout-fraction", "0.2", "--no-progress"]
REWARD_FLAGS = [
    "--steps",
    "4",
    "--batch-size",
    "8",
    "--trainable-layers",
    "1",
    "--heldout-fraction",
    "0.25",
    "--no-progress",
]


# --- rlhf sft -------------------------------------------------------------------------


def test_sft_writes_policy_v2_with_heldout_metrics_and_provenance(policy_store, tmp_path, capsys):
    data = write_jsonl(tmp_path / "demos.jsonl", demonstration_lines())
    assert main(["sft", "--data", data, "--model-store", str(policy_store.root), *SFT_FLAGS]) == 0
    out = capsys.readouterr().out

    assert policy_store.versions("policy") == ["v1", "v2"] and policy_store.current("policy") == "v1"
    manifest = policy_store.manifest("policy", "v2")
    assert manifest.parent_version == "v1"
    metrics = manifest.eval_metrics
    counts = json.loads(manifest.notes["counts"])
    assert counts["demonstrations"] == 40 and counts["heldout"] >= 1 and counts["train"] + counts["heldout"] == 40
    assert metrics["heldout_demonstrations"] == counts["heldout"]
    # The held-out responses are answers the training set teaches: their loss must fall.
    assert metrics["heldout_response_loss"] < metrics["previous_heldout_response_loss"]
    assert metrics["sft_train_loss_final"] < metrics["sft_train_loss_first"]
    assert manifest.notes["source"] == "rlhf sft"
    assert manifest.notes["data_sha256"] == sha256_file(tmp_path / "demos.jsonl")
    assert manifest.notes["data_file"] == str((tmp_path / "demos.jsonl").resolve())
    assert json.loads(manifest.notes["hyperparameters"]) == {
        "steps": 12,
        "batch_size": 4,
        "lr": 3e-3,
        "max_length": 128,
        "seed": 0,
        "heldout_fraction": 0.2,
    }
    assert "model.safetensors" in manifest.files and "tokenizer.json" in manifest.files
    assert "policy v2 written (from v1" in out and "held-out response loss" in out and "->" in out
    assert "rlhf promote policy v2" in out

    from shared.models.policy_eval import load_policy

    model, _ = load_policy(policy_store.open_version("policy", "v2"))  # every sha256 checks out
    assert model.config.n_layer == 2


def test_sft_from_a_named_version_with_set_current(policy_store, tmp_path, capsys):
    data = write_jsonl(tmp_path / "demos.jsonl", demonstration_lines(12))
    argv = ["sft", "--data", data, "--model-store", str(policy_store.root), *SFT_FLAGS]
    assert main([*argv, "--steps", "2"]) == 0
    assert main([*argv, "--steps", "2", "--from", "v2", "--set-current"]) == 0
    assert policy_store.versions("policy") == ["v1", "v2", "v3"] and policy_store.current("policy") == "v3"
    assert policy_store.manifest("policy", "v3").parent_version == "v2"
    assert "policy v3 is now CURRENT" in capsys.readouterr().out


def test_sft_renders_messages_with_the_policys_chat_template(tiny_lm_dir, tmp_path):
    from services.trainer.supervised.from_file import SftFileSettings, sft_from_file

    chat_dir = tmp_path / "chat-lm"
    shutil.copytree(tiny_lm_dir, chat_dir)
    config_path = chat_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    config_path.write_text(json.dumps(config))
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", copy_dir(chat_dir))
    lines = [
        {"messages": [{"role": "user", "content": f"how do I {task}? ({i})"}, {"role": "assistant", "content": answer}]}
        for i, (task, answer) in enumerate(list(ANSWERS.items()) * 3)
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", lines)
    result = sft_from_file(store, data, SftFileSettings(steps=2, batch_size=4), progress=False, log=lambda _: None)
    assert result.version == "v2" and result.train_items + result.heldout_items == 9
    assert result.metrics["previous_heldout_response_loss"] > 0


def test_sft_messages_without_a_chat_template_exit_2_naming_the_line(policy_store, tmp_path, capsys):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    data = write_jsonl(tmp_path / "demos.jsonl", demonstration_lines(3) + [{"messages": messages}])
    assert main(["sft", "--data", data, "--model-store", str(policy_store.root), *SFT_FLAGS]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"rlhf sft: {data}:4: field 'messages': ") and "no chat template" in out
    assert policy_store.versions("policy") == ["v1"]


def test_sft_bad_lines_exit_2_listing_each_and_store_unchanged(policy_store, tmp_path, capsys):
    before = store_entries(policy_store, "policy")
    lines = demonstration_lines(3) + ["{not json", {"prompt": "Q", "response": ""}, "", {"prompt": "Q"}]
    data = write_jsonl(tmp_path / "demos.jsonl", lines)
    assert main(["sft", "--data", data, "--model-store", str(policy_store.root), *SFT_FLAGS]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"rlhf sft: {data}:4: is not valid JSON")
    assert f"{data}:5: field 'response': is empty" in out and f"{data}:7: field 'response': is missing" in out
    assert store_entries(policy_store, "policy") == before == {"v1", "CURRENT"}


def test_sft_prompt_longer_than_max_length_is_a_line_error(policy_store, tmp_path, capsys):
    lines = demonstration_lines(3) + [{"prompt": "how do I boil an egg " * 20, "response": "Boil it."}]
    data = write_jsonl(tmp_path / "demos.jsonl", lines)
    assert main(["sft", "--data", data, "--model-store", str(policy_store.root), *SFT_FLAGS, "--max-length", "16"]) == 2
    assert f"{data}:4: field 'prompt': fills all 16 tokens of --max-length" in capsys.readouterr().out
    assert policy_store.versions("policy") == ["v1"]


def test_sft_unknown_base_or_empty_store_exit_2(policy_store, tmp_path, capsys):
    data = write_jsonl(tmp_path / "demos.jsonl", demonstration_lines(3))
    assert main(["sft", "--data", data, "--model-store", str(policy_store.root), "--from", "v9"]) == 2
    assert "policy v9 is not in the model store" in capsys.readouterr().out
    assert main(["sft", "--data", data, "--model-store", str(tmp_path / "empty")]) == 2
    assert "holds no policy version to start from" in capsys.readouterr().out


def test_sft_training_that_raises_leaves_the_store_unchanged(policy_store, tmp_path):
    from services.trainer.supervised.from_file import SftFileSettings, sft_from_file
    from services.trainer.supervised.sft import sft_train

    def interrupted_after_training(*args, **kwargs):
        sft_train(*args, **kwargs)
        raise KeyboardInterrupt  # as Ctrl-C would, after real training changed the weights

    data = write_jsonl(tmp_path / "demos.jsonl", demonstration_lines(8))
    with pytest.raises(KeyboardInterrupt):
        sft_from_file(
            policy_store,
            data,
            SftFileSettings(steps=2, batch_size=4),
            progress=False,
            log=lambda _: None,
            train_fn=interrupted_after_training,
        )
    assert store_entries(policy_store, "policy") == {"v1", "CURRENT"}
    assert policy_store.current("policy") == "v1"


# --- rlhf train-reward -------------------------------------------------------------------


def test_train_reward_writes_reward_v2_with_pairwise_accuracy_before_and_after(reward_store, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", comparison_lines())
    argv = ["train-reward", "--data", data, "--model-store", str(reward_store.root), *REWARD_FLAGS]
    assert main([*argv, "--set-current", "--max-length", "24"]) == 0
    out = capsys.readouterr().out

    assert reward_store.versions("reward") == ["v1", "v2"] and reward_store.current("reward") == "v2"
    manifest = reward_store.manifest("reward", "v2")
    assert manifest.parent_version == "v1"
    metrics = manifest.eval_metrics
    for key in ("pairwise_accuracy", "previous_pairwise_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["heldout_pairs"] >= 1 and metrics["heldout_pairs"] + metrics["reward_train_pairs"] == 24
    assert "reward_loss_final" in metrics
    assert manifest.notes["source"] == "rlhf train-reward" and manifest.notes["scoring_backend"] == "onnx"
    assert manifest.notes["data_sha256"] == sha256_file(tmp_path / "pairs.jsonl")
    assert json.loads(manifest.notes["hyperparameters"])["max_length"] == 24
    assert {"model.safetensors", "model.onnx", "reward_config.json"} <= set(manifest.files)
    assert "reward v2 written (from v1" in out and "held-out pairwise accuracy" in out
    assert "reward v2 is now CURRENT" in out

    from shared.models.reward.format import load_reward_model
    from shared.models.reward.scoring import score_texts

    model, tokenizer = load_reward_model(reward_store.open_version("reward", "v2"))
    assert model.head_config.max_length == 24  # scored at the length it was trained at (v1: 32)
    assert len(score_texts(model, tokenizer, ["How do I boil an egg?"], ["Boil it."])) == 1


def test_train_reward_from_minilm_starts_an_empty_store_with_the_chat_frame_stripped(tmp_path, capsys):
    from services.trainer.supervised.from_file import NEW_REWARD_BASE, RewardFileSettings, reward_from_file
    from shared.models.reward.format import load_reward_model

    store = ModelStore(tmp_path / "store")
    data = write_jsonl(tmp_path / "pairs.jsonl", comparison_lines())
    argv = ["train-reward", "--from", "minilm", "--data", data, "--model-store", str(store.root), *REWARD_FLAGS]
    assert main([*argv, "--set-current"]) == 0
    assert "reward v1 written (from the MiniLM backbone, a new head" in capsys.readouterr().out
    assert store.current("reward") == "v1" and store.manifest("reward", "v1").parent_version == ""

    # The app's chat frame is saved with the model, so the reward service strips it as trained.
    frame = ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")
    settings = RewardFileSettings(steps=2, batch_size=8, trainable_layers=1, heldout_fraction=0.25, prompt_frame=frame)
    result = reward_from_file(store, data, settings, base=NEW_REWARD_BASE, progress=False, log=lambda _: None)
    model, _ = load_reward_model(store.open_version("reward", result.version))
    assert result.version == "v2" and model.head_config.frame == frame


def test_train_reward_bad_lines_exit_2_and_store_unchanged(reward_store, tmp_path, capsys):
    lines = comparison_lines(4) + [
        {"prompt": "Q", "chosen": "same", "rejected": "same"},
        {"chosen": "a", "rejected": "b"},
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", lines)
    assert main(["train-reward", "--data", data, "--model-store", str(reward_store.root), *REWARD_FLAGS]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"rlhf train-reward: {data}:5: field 'rejected': is the same text as `chosen`")
    assert f"{data}:6: field 'prompt': is missing" in out
    assert store_entries(reward_store, "reward") == {"v1", "CURRENT"}


def test_train_reward_interrupted_training_leaves_the_store_unchanged(reward_store, tmp_path):
    from services.trainer.supervised.from_file import RewardFileSettings, reward_from_file
    from services.trainer.supervised.reward_training import TrainingInterrupted, train_reward_model

    def stopped(*args, **kwargs):
        return train_reward_model(*args, should_stop=lambda: True, **kwargs)  # the real interruption path

    data = write_jsonl(tmp_path / "pairs.jsonl", comparison_lines(6))
    with pytest.raises(TrainingInterrupted):
        reward_from_file(
            reward_store,
            data,
            RewardFileSettings(steps=2, batch_size=4, trainable_layers=1),
            progress=False,
            log=lambda _: None,
            train_fn=stopped,
        )
    assert store_entries(reward_store, "reward") == {"v1", "CURRENT"}
