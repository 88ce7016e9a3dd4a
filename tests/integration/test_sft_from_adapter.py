"""`rlhf sft --from VERSION` where VERSION is a LoRA adapter version: the adapter trains on
(its base frozen), and the result is a new adapter version on the same base, which loads and
serves like any adapter version. Real store, the tiny GPT-2 as the base, a PEFT adapter on it."""

from __future__ import annotations

import json

import torch

from rlhf_cli.main import main
from shared.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_settings
from shared.models.policy_eval import load_policy
from tests.lora_versions import store_with_base, write_adapter_version

ANSWERS = ["Put the egg in boiling water for nine minutes.", "Water the soil until it is damp, not soaked."]
TASKS = ["boil an egg", "water a plant"]
SFT_FLAGS = ["--steps", "12", "--batch-size", "4", "--lr", "3e-3", "--heldout-fraction", "0.2", "--no-progress"]


def write_demonstrations(path, n: int = 40) -> str:
    lines = [
        {"prompt": f"User: how do I {TASKS[i % 2]}? (asked {i} times)\nAssistant:", "response": ANSWERS[i % 2]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def lora_weights(store, version: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(store.version_dir("policy", version) / ADAPTER_WEIGHTS))


def test_sft_from_an_adapter_version_writes_a_new_adapter_on_the_same_base(tiny_lm_dir, tmp_path, capsys):
    store = store_with_base(tmp_path / "store", tiny_lm_dir)
    adapter = write_adapter_version(store, seed=3)  # v2: an adapter on v1
    base_files = dict(store.manifest("policy", "v1").files)
    data = write_demonstrations(tmp_path / "demos.jsonl")

    code = main(["sft", "--data", data, "--model-store", str(store.root), "--from", adapter, *SFT_FLAGS])
    out = capsys.readouterr().out
    assert code == 0, out

    manifest = store.manifest("policy", "v3")
    assert manifest.base_version == "v1" and manifest.parent_version == adapter, "an adapter on the same base"
    assert set(manifest.files) == {ADAPTER_CONFIG, ADAPTER_WEIGHTS}, "PEFT's files alone: the base's tokenizer serves"
    assert store.manifest("policy", "v1").files == base_files, "the base is untouched"
    started_with = adapter_settings(store.version_dir("policy", adapter))
    trained_with = adapter_settings(store.version_dir("policy", "v3"))
    assert (trained_with["r"], trained_with["target_modules"]) == (started_with["r"], started_with["target_modules"])

    trained, started = lora_weights(store, "v3"), lora_weights(store, adapter)
    assert set(trained) == set(started) and any(not torch.equal(trained[k], started[k]) for k in trained)
    metrics = manifest.eval_metrics
    assert metrics["heldout_response_loss"] < metrics["previous_heldout_response_loss"]
    assert json.loads(manifest.notes["counts"])["demonstrations"] == 40
    assert f"policy v3 written (a LoRA adapter on v1, from {adapter};" in out

    model, tokenizer = load_policy(store.open_version("policy", "v3"))  # every sha256 checks out; PEFT loads it
    ids = tokenizer("User: how do I boil an egg?\nAssistant:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_sft_from_full_weights_still_writes_full_weights(tiny_lm_dir, tmp_path, capsys):
    store = store_with_base(tmp_path / "store", tiny_lm_dir)
    write_adapter_version(store, seed=3)
    data = write_demonstrations(tmp_path / "demos.jsonl")
    assert main(["sft", "--data", data, "--model-store", str(store.root), "--from", "v1", *SFT_FLAGS]) == 0
    manifest = store.manifest("policy", "v3")
    assert manifest.base_version == "" and "model.safetensors" in manifest.files
    assert "policy v3 written (from v1;" in capsys.readouterr().out
