"""`rlhf import policy|reward DIR`: real tiny foreign models (tests.foreign_models) into a real model store.

What is imported verifies, loads and runs (a Llama-style policy generates
through the policy service's loader); what is refused names the problem and
leaves nothing in the store."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlhf_cli.main import main as rlhf_main
from shared.models.importer import ModelImportError, import_policy, import_reward
from shared.models.prompting import ChatMessage, encode_prompt, render_chat
from shared.models.store import MANIFEST, ModelStore, sha256_file
from tests.foreign_models import build_tiny_llama, build_tiny_seq_cls_reward


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    return {
        "llama": build_tiny_llama(root / "llama"),
        "llama-no-pad": build_tiny_llama(root / "llama-no-pad", with_pad_token=False),
        "reward-llama": build_tiny_seq_cls_reward(root / "reward-llama", arch="llama", with_pad_token=False),
        "reward-bert": build_tiny_seq_cls_reward(root / "reward-bert", arch="bert"),
    }


def copy_of(src, dst, *, without=()):
    shutil.copytree(src, dst)
    for name in without:
        (dst / name).unlink()
    return dst


def assert_store_empty(store: ModelStore):
    for kind in ("policy", "reward"):
        kdir = store.kind_dir(kind)
        leftovers = sorted(p.name for p in kdir.iterdir()) if kdir.exists() else []
        assert leftovers == [], f"{kind}: {leftovers}"


def test_policy_import_verifies_loads_and_generates(models, tmp_path):
    from services.policy.model import load_from_store

    store = ModelStore(tmp_path / "store")
    result = import_policy(store, models["llama-no-pad"], notes={"ticket": "byom"})
    assert result.version == "v1" and not result.current
    vdir = store.open_version("policy", "v1")  # every sha256 checked
    manifest = store.manifest("policy", "v1")
    assert manifest.parent_version == "" and manifest.notes == result.notes
    assert manifest.files["model.safetensors"] == sha256_file(models["llama-no-pad"] / "model.safetensors")
    assert result.notes["format"] == "hf-causal-lm" and result.notes["architecture"] == "LlamaForCausalLM"
    assert result.notes["source_path"] == str(models["llama-no-pad"]) and result.notes["ticket"] == "byom"
    assert "set to the eos token" in result.notes["pad_token"]
    assert result.notes["chat_template"] == "yes" and result.notes["adds_bos"] == "true"
    assert not [p for p in vdir.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]

    bundle = load_from_store(store.root)
    assert bundle.version == "v1" and bundle.tokenizer.pad_token == "</s>"
    prompt = render_chat(bundle.tokenizer, [ChatMessage("user", "How do I boil an egg?")])
    ids = encode_prompt(bundle.tokenizer, prompt)
    assert ids[0] == bundle.tokenizer.bos_token_id and ids[1] != bundle.tokenizer.bos_token_id
    with torch.no_grad():
        out = bundle.model.generate(
            torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=bundle.pad_token_id
        )
    assert out.shape == (1, len(ids) + 6)


def test_set_current_moves_current_and_parents_follow_it(models, tmp_path):
    store = ModelStore(tmp_path / "store")
    assert import_policy(store, models["llama"], set_current=True).current
    assert (store.kind_dir("policy") / "CURRENT").read_text().strip() == "v1"
    second = import_policy(store, models["llama"])
    assert second.version == "v2" and store.current("policy") == "v1"  # stored, not served
    assert store.manifest("policy", "v2").parent_version == "v1"
    assert import_policy(store, models["llama"], set_current=True).version == "v3"
    assert store.current("policy") == "v3"
    # A tokenizer with its own pad token is stored byte for byte.
    assert "the tokenizer's own" in store.manifest("policy", "v3").notes["pad_token"]
    assert sha256_file(store.kind_dir("policy") / "v3" / "tokenizer_config.json") == sha256_file(
        models["llama"] / "tokenizer_config.json"
    )


def build_bad_dir(case: str, models, tmp_path):
    """(importer, dir) for each refusal case."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from shared.models.reward.minilm import minilm_dir

    if case == "missing-dir":
        return import_policy, tmp_path / "nowhere"
    if case == "pickle-only":
        bad = copy_of(models["llama"], tmp_path / "bad", without=["model.safetensors"])
        (bad / "pytorch_model.bin").write_bytes(b"not loaded: refused by its name")
        return import_policy, bad
    if case == "no-tokenizer":
        return import_reward, copy_of(
            models["reward-llama"],
            tmp_path / "bad",
            without=["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"],
        )
    if case == "two-labels":
        return import_reward, build_tiny_seq_cls_reward(tmp_path / "bad", num_labels=2)
    if case == "bert-as-policy":
        bad = tmp_path / "bad"
        BertModel(
            BertConfig(
                vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
            )
        ).save_pretrained(bad)
        AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(bad)
        return import_policy, bad
    if case == "classifier-as-policy":
        return import_policy, models["reward-llama"]
    if case == "bert-weights-no-architectures":
        bad = tmp_path / "bad"
        BertModel(
            BertConfig(
                vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
            )
        ).save_pretrained(bad)
        AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(bad)
        config = json.loads((bad / "config.json").read_text())
        del config["architectures"]  # nothing says what it is: only the weights can tell
        (bad / "config.json").write_text(json.dumps(config))
        return import_policy, bad
    if case == "base-model-as-reward":
        from transformers import LlamaModel

        bad = copy_of(models["reward-llama"], tmp_path / "bad", without=["model.safetensors"])
        config = LlamaModel.config_class.from_pretrained(bad)
        LlamaModel(config).save_pretrained(tmp_path / "base")  # the backbone, without a score head
        shutil.copyfile(tmp_path / "base" / "model.safetensors", bad / "model.safetensors")
        return import_reward, bad
    if case == "lora-adapter":
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "adapter_config.json").write_text("{}")
        (bad / "adapter_model.safetensors").write_bytes(b"")
        return import_policy, bad
    if case == "missing-shard":
        bad = copy_of(models["llama"], tmp_path / "bad", without=["model.safetensors"])
        (bad / "model.safetensors.index.json").write_text(
            json.dumps(
                {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
            )
        )
        (bad / "model-00001-of-00002.safetensors").write_bytes(b"")
        return import_policy, bad
    raise AssertionError(case)


REFUSALS = {
    "missing-dir": ["nowhere does not exist"],
    "pickle-only": ["pytorch_model.bin", "pickle", "save_pretrained(dir, safe_serialization=True)"],
    "no-tokenizer": ["has no tokenizer", "tokenizer.save_pretrained"],
    "two-labels": ["num_labels is 2", "one scalar label"],
    "bert-as-policy": ["['BertModel']", "not a causal language model"],
    "classifier-as-policy": ["LlamaForSequenceClassification", "not a causal language model"],
    "bert-weights-no-architectures": ["do not cover", "cls.predictions"],
    "base-model-as-reward": ["do not cover", "score.weight"],
    "lora-adapter": ["PEFT/LoRA adapter", "merge_and_unload"],
    "missing-shard": ["model-00002-of-00002.safetensors", "not in the directory"],
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_problem_and_write_nothing(case, models, tmp_path):
    importer, bad = build_bad_dir(case, models, tmp_path)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelImportError) as info:
        importer(store, bad, set_current=True)
    for part in REFUSALS[case]:
        assert part in str(info.value), str(info.value)
    assert_store_empty(store)


def test_unused_and_pickle_files_next_to_safetensors_are_skipped_with_a_warning(models, tmp_path):
    src = copy_of(models["llama"], tmp_path / "src")
    (src / "training_args.bin").write_bytes(b"pickle, never copied")
    (src / "model.onnx").write_bytes(b"stale")
    store = ModelStore(tmp_path / "store")
    result = import_policy(store, src)
    assert sorted(w.split(":")[0] for w in result.warnings) == ["not imported"] * 2
    assert "training_args.bin" in result.notes["skipped_files"]
    files = set(store.manifest("policy", result.version).files)
    assert "training_args.bin" not in files and "model.onnx" not in files and "model.safetensors" in files


def test_cli_prints_the_version_and_choices_and_exits_2_on_a_bad_dir(models, tmp_path, capsys):
    store = tmp_path / "store"
    assert (
        rlhf_main(["import", "reward", str(models["reward-llama"]), "--model-store", str(store), "--set-current"]) == 0
    )
    out = capsys.readouterr().out
    assert "imported reward v1 (LlamaForSequenceClassification, hf-sequence-classification)" in out
    assert "scoring backend: onnx" in out and "pad token: tokenizer pad_token set to its eos token" in out
    assert ModelStore(store).current("reward") == "v1"
    assert rlhf_main(["import", "policy", str(tmp_path / "nowhere"), "--model-store", str(store)]) == 2
    assert capsys.readouterr().out.startswith("rlhf import: ")
    assert ModelStore(store).versions("policy") == []


def test_manifest_is_the_store_own(models, tmp_path):
    src = copy_of(models["llama"], tmp_path / "src")
    (src / MANIFEST).write_text('{"kind": "policy", "version": "v99"}')
    store = ModelStore(tmp_path / "store")
    assert import_policy(store, src).version == "v1"
    assert store.manifest("policy", "v1").version == "v1"


def test_sharded_weights_behind_symlinks_import_as_plain_files(models, tmp_path):
    """The layout of a large model in the Hugging Face cache: an index, several
    shards, and every file a symlink to a blob."""
    from transformers import AutoModelForCausalLM

    from services.policy.model import load_from_store

    blobs = tmp_path / "blobs"
    AutoModelForCausalLM.from_pretrained(models["llama"]).save_pretrained(blobs, max_shard_size="60KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(models["llama"] / name, blobs / name)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for blob in blobs.iterdir():
        (snapshot / blob.name).symlink_to(blob)
    shards = sorted(p.name for p in blobs.glob("model-*.safetensors"))
    assert len(shards) >= 2
    store = ModelStore(tmp_path / "store")
    result = import_policy(store, snapshot)
    vdir = store.open_version("policy", result.version)
    assert {"model.safetensors.index.json", *shards} <= set(store.manifest("policy", result.version).files)
    assert not any(p.is_symlink() for p in vdir.iterdir())
    assert load_from_store(store.root).num_parameters == int(result.notes["num_parameters"])
