"""The four-step bootstrap on a reduced config: real training, real store."""

from __future__ import annotations

import json

import pytest

from demo.bootstrap import CACHE_DIR, DIGEST_NOTE, BootstrapError, run_bootstrap
from demo.bootstrap_config import reduced_config
from shared.models.store import ModelStore

# The bootstrap builds real (small) models: ~20 s before the first test.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    config = reduced_config()
    lines: list[str] = []
    result = run_bootstrap(root, config, progress=False, log=lines.append)
    return root, config, result, lines


def test_store_holds_v1_of_both_with_manifests_and_metrics(bootstrapped):
    root, config, result, _ = bootstrapped
    store = ModelStore(root)
    assert not result.cached
    for kind in ("policy", "reward"):
        assert store.versions(kind) == ["v1"]
        assert store.current(kind) == "v1"
        manifest = store.manifest(kind, "v1")
        assert manifest.notes[DIGEST_NOTE] == config.digest()
        store.open_version(kind, "v1")  # every sha256 checks out
    policy = store.manifest("policy", "v1")
    for key in (
        "satisfaction",
        "base_satisfaction",
        "axis_helpful",
        "axis_polite",
        "axis_correct",
        "axis_safe",
        "axis_concise",
        "reward_mean",
        "kl_to_reference",
    ):
        assert key in policy.eval_metrics, key
    assert policy.eval_metrics["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)  # v1 is the reference
    assert "model.safetensors" in policy.files and "tokenizer.json" in policy.files
    reward = store.manifest("reward", "v1")
    assert 0.0 <= reward.eval_metrics["pairwise_accuracy"] <= 1.0
    assert {"model.safetensors", "model.onnx", "reward_config.json"} <= set(reward.files)


def test_each_step_learned(bootstrapped):
    _, _, result, _ = bootstrapped
    p, r = result.policy_metrics, result.reward_metrics
    assert p["pretrain_loss_final"] < p["pretrain_loss_first"]
    assert p["sft_loss_after"] < p["sft_loss_before"]
    assert r["reward_loss_final"] < r["reward_loss_first"]


def test_models_load_and_generate(bootstrapped):
    from demo.world import build_prompts
    from shared.models.policy_eval import SamplingSettings, load_policy, sample_responses
    from shared.models.reward.format import load_reward_model
    from shared.models.reward.scoring import score_texts

    root, _, _, _ = bootstrapped
    store = ModelStore(root)
    policy, tokenizer = load_policy(store.open_version("policy", "v1"))
    prompt = build_prompts()[0]
    samples = sample_responses(
        policy, tokenizer, [prompt.text], SamplingSettings(samples_per_prompt=2, max_new_tokens=8)
    )
    assert len(samples) == 2 and all(len(s.response_ids) <= 8 for s in samples)
    reward, reward_tokenizer = load_reward_model(store.open_version("reward", "v1"))
    assert len(score_texts(reward, reward_tokenizer, [prompt.text], [samples[0].text])) == 1


def test_policy_renders_chat_in_its_training_frame(bootstrapped):
    """The OpenAI front door's chat works on the demo policy: its tokenizer carries the frame's chat template."""
    from demo.world import build_prompts
    from shared.models.policy_eval import load_policy
    from shared.models.prompting import ChatMessage, render_chat

    root, _, _, _ = bootstrapped
    _, tokenizer = load_policy(ModelStore(root).open_version("policy", "v1"))
    prompt = build_prompts()[0]
    assert render_chat(tokenizer, [ChatMessage("user", prompt.question)]) == prompt.text


def test_rerun_is_cached_and_writes_nothing(bootstrapped):
    root, config, _, _ = bootstrapped
    again = run_bootstrap(root, config, progress=False, log=lambda _: None)
    assert again.cached
    assert ModelStore(root).versions("policy") == ["v1"]


def test_finished_steps_are_reused_after_an_interruption(bootstrapped, tmp_path):
    import shutil

    root, config, _, _ = bootstrapped
    # A store whose models were never written, but whose step cache survived.
    shutil.copytree(root / CACHE_DIR, tmp_path / CACHE_DIR)
    lines: list[str] = []
    result = run_bootstrap(tmp_path, config, progress=False, log=lines.append)
    assert sum("cached at" in line for line in lines) == 4
    assert not result.cached and ModelStore(tmp_path).versions("reward") == ["v1"]


def test_a_different_config_is_refused(bootstrapped):
    root, config, _, _ = bootstrapped
    with pytest.raises(BootstrapError, match="another bootstrap"):
        run_bootstrap(root, reduced_config(seed=config.seed + 1), progress=False, log=lambda _: None)


def test_eval_cli_reports_json(bootstrapped, capsys):
    from rlhf_cli.main import main

    root, _, _, _ = bootstrapped
    assert main(["eval", "--policy", "v1", "--model-store", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "policy" and 0.0 <= out["metrics"]["satisfaction"] <= 1.0
    assert out["metrics"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert main(["eval", "--reward", "v1", "--model-store", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["metrics"]["pairwise_accuracy"] <= 1.0
    assert main(["eval", "--policy", "v9", "--model-store", str(root)]) == 2
