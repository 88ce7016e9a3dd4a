"""LoRA adapter versions through the loop and the CLI: a LoRA round promotes an adapter
version on its base, the next round continues that adapter (reference = the base),
load_policy loads it, lineage and status name the base, and `rlhf import` / `rlhf export`
take an adapter made with PEFT in and a merged model out that transformers loads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_cli.main import main
from services.trainer.loop.policy_round import PolicyRounds
from services.trainer.loop.promotion import Promoter
from services.trainer.methods.lora import AdapterOffReference
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
from shared.models.adapter_import import import_adapter
from shared.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from shared.models.hf_dir import ModelImportError
from shared.models.policy_eval import load_policy
from shared.models.policy_export import ExportError, export_policy
from shared.models.store import ModelStore
from tests.lora_versions import lora_adapter, store_with_base

PROMPTS = ["User: how do I boil an egg?\nAssistant:", "User: hi\nAssistant:"]
RLOO_LORA = RLOOConfig(
    batch_size=2, samples_per_prompt=2, mini_batch_size=2, max_new_tokens=6, num_threads=1, lora_rank=4,
    learning_rate=1e-2,
)  # fmt: skip


def short_answer_reward(prompts, responses):
    return [-abs(len(r.split()) - 3) / 3.0 for r in responses]


class AckedProducer:
    """A Kafka producer stand-in whose every send is acknowledged at once."""

    def send(self, *args, **kwargs):
        return self

    def get(self, timeout=None):
        return None

    def close(self, timeout=None):
        pass


@pytest.fixture()
def store(tmp_path, tiny_lm_dir) -> ModelStore:
    return store_with_base(tmp_path / "store", tiny_lm_dir)


def logits(model, tokenizer, text: str = PROMPTS[0]) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_a_lora_round_promotes_an_adapter_on_its_base_and_the_next_round_continues_it(store, tmp_path):
    rounds = PolicyRounds(store, tmp_path / "state" / "ckpt", short_answer_reward, lambda *_: RLOO_LORA, method="rloo")
    rounds.begin_round()
    rounds.run_step(PROMPTS, [])
    assert isinstance(rounds.trainer.reference, AdapterOffReference)
    assert rounds.adapter_base_version() == "v1"
    promoter = Promoter(store, lambda: AckedProducer())
    update = promoter.promote_new(
        "policy", rounds.save_policy, parent_version="v1", eval_metrics={}, reason="test",
        base_version=rounds.adapter_base_version(),
    )  # fmt: skip
    assert update.version == "v2" and store.current("policy") == "v2"
    manifest = store.manifest("policy", "v2")
    assert manifest.base_version == "v1" and set(manifest.files) == {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    trained = logits(rounds.trainer.policy, rounds.trainer.tokenizer)
    rounds.end_round("v2")

    # load_policy (the gate, `rlhf eval`) loads the adapter version: base + adapter, the trained policy.
    policy, tokenizer = load_policy(store.version_dir("policy", "v2"))
    assert not policy.training and torch.allclose(logits(policy, tokenizer), trained, atol=1e-5)

    # A restarted trainer continues the adapter on its base; its reference stays the base v1.
    restarted = PolicyRounds(
        store, tmp_path / "state2" / "ckpt", short_answer_reward, lambda *_: RLOO_LORA, method="rloo"
    )
    trainer = restarted.ensure_trainer()
    assert torch.allclose(logits(trainer.policy, trainer.tokenizer), trained, atol=1e-5)
    base, _ = load_policy(store.version_dir("policy", "v1"))
    assert torch.allclose(logits(trainer.reference, tokenizer), logits(base, tokenizer), atol=1e-6)
    assert restarted.adapter_base_version() == "v1"
    restarted.begin_round()
    restarted.run_step(PROMPTS, [])  # trains on from the stored adapter

    # Lineage says what the adapter applies to.
    assert main(["lineage", "policy", "v2", "--model-store", str(store.root), "--json"]) == 0


def test_lineage_report_names_the_base(store, capsys):
    from tests.lora_versions import write_adapter_version

    write_adapter_version(store, seed=1)
    assert main(["lineage", "policy", "v2", "--model-store", str(store.root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["base_version"] == "v1" and report["ancestor_bases"] == {"v2": "v1"}
    assert main(["lineage", "policy", "v2", "--model-store", str(store.root)]) == 0
    assert "a LoRA adapter on base policy v1" in capsys.readouterr().out


def test_status_names_the_base_of_an_adapter_version(store):
    from rlhf_cli.status_cmd import policy_base_version
    from tests.lora_versions import write_adapter_version

    version = write_adapter_version(store, seed=1)
    assert policy_base_version(str(store.root), version) == "v1"
    assert policy_base_version(str(store.root), "v1") == "" and policy_base_version("/nonexistent", version) == ""


def test_import_an_adapter_then_export_it_merged_and_as_base_plus_adapter(store, tiny_lm_dir, tmp_path, capsys):
    peft_model = lora_adapter(tiny_lm_dir, seed=3)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert main(["import", "policy", str(tmp_path / "adapter"), "--model-store", str(store.root)]) == 0
    assert "a LoRA adapter (rank 4) on policy v1" in capsys.readouterr().out
    manifest = store.manifest("policy", "v2")
    assert manifest.base_version == "v1" and set(manifest.files) == {ADAPTER_CONFIG, ADAPTER_WEIGHTS}

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    expected = logits(peft_model.eval(), tokenizer)
    assert main(["export", "v2", str(tmp_path / "merged"), "--merged", "--model-store", str(store.root)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert "peft" not in type(merged).__module__
    assert torch.allclose(logits(merged, AutoTokenizer.from_pretrained(tmp_path / "merged")), expected, atol=1e-5)

    result = export_policy(store, "v2", tmp_path / "split")
    assert result.layout == "base + adapter" and (tmp_path / "split" / "README.md").is_file()
    from peft import PeftModel

    split = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tmp_path / "split"), str(tmp_path / "split" / "adapter")
    ).eval()
    assert torch.allclose(logits(split, tokenizer), expected, atol=1e-5)

    with pytest.raises(ExportError, match="not an empty directory"):
        export_policy(store, "v2", tmp_path / "merged", merged=True)
    with pytest.raises(ExportError, match="v9 is not in the model store"):
        export_policy(store, "v9", tmp_path / "nowhere")
    assert main(["export", "v9", str(tmp_path / "nowhere"), "--model-store", str(store.root)]) == 2


def test_an_adapter_that_does_not_fit_its_base_is_refused(store, tiny_lm_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / ADAPTER_CONFIG).read_text())
    shutil.copytree(tmp_path / "ok", tmp_path / "wrong-modules")
    (tmp_path / "wrong-modules" / ADAPTER_CONFIG).write_text(json.dumps({**config, "target_modules": ["q_proj"]}))
    with pytest.raises(ModelImportError, match="does not fit the base"):
        import_adapter(store, tmp_path / "wrong-modules")
    shutil.copytree(tmp_path / "ok", tmp_path / "wrong-rank")
    (tmp_path / "wrong-rank" / ADAPTER_CONFIG).write_text(json.dumps({**config, "r": 3}))
    with pytest.raises(ModelImportError, match="do not fit the base"):
        import_adapter(store, tmp_path / "wrong-rank")
    (tmp_path / "ok" / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(ModelImportError, match="has no adapter_model.safetensors"):
        import_adapter(store, tmp_path / "ok")
    assert store.versions("policy") == ["v1"], "nothing written"
    with pytest.raises(ModelImportError, match="v7 is not in the model store"):
        import_adapter(store, tmp_path / "wrong-rank", base_version="v7")
