"""LoRA adapter versions on a resident base (services.policy.resident): the base is
read once, each bundle's rows get its adapter (also mixed in one forward and from
two engines at once), unused adapters are unloaded, and unset sampling fields
take the version's generation_config defaults."""

from __future__ import annotations

import gc
import json
import threading

import pytest
import torch

from services.policy import metrics as pm
from services.policy.config import PolicyConfig
from services.policy.engine import EngineSettings, GenerationEngine
from services.policy.model import ModelLoadError, load_bundle, load_from_store
from services.policy.resident import BASE_ROWS, collect_unused
from services.policy.sampling import SamplingDefaults, SamplingRequest, model_sampling_defaults
from services.policy.server import PolicyServicer
from tests.lora_versions import reference_greedy, store_with_base, write_adapter_version

PROMPT = "User: how do I boil an egg?\nAssistant:"
GREEDY = SamplingRequest(temperature=0.0, max_new_tokens=10)


@pytest.fixture()
def store(tmp_path, tiny_lm_dir):
    store = store_with_base(tmp_path / "store", tiny_lm_dir)
    write_adapter_version(store, seed=1)  # v2
    write_adapter_version(store, seed=2)  # v3
    return store


def _generate(engine: GenerationEngine, sampling=GREEDY, prompt: str = PROMPT):
    return engine.submit(prompt, sampling).result(60)


def test_adapter_versions_share_the_base_and_match_peft(store):
    base = load_from_store(store.root, "v1")
    loads = pm.BASE_LOADS._value.get()
    v2, v3 = load_from_store(store.root, "v2"), load_from_store(store.root, "v3")
    assert pm.BASE_LOADS._value.get() == loads  # no base read for either adapter
    assert v2.model is base.model and v3.model is base.model and v2.tokenizer is base.tokenizer
    assert (v2.adapter, v3.adapter, base.adapter) == ("policy-v2", "policy-v3", "")
    assert v2.resident is base.resident and base.resident.adapters == {"policy-v2", "policy-v3"}
    assert v2.base_version == "v1" and v2.num_parameters == base.num_parameters
    engine = GenerationEngine(base, EngineSettings(max_batch_size=4)).start()
    try:
        texts = {}
        for bundle in (base, v2, v3, base):
            engine.swap(bundle)
            texts[bundle.version] = _generate(engine).sequences[0].text
    finally:
        engine.stop()
    for version, text in texts.items():
        assert text == reference_greedy(store, version, PROMPT, 10), version
    assert len(set(texts.values())) == 3  # the adapters change the output


def test_rows_of_different_adapters_in_one_forward(store):
    base = load_from_store(store.root, "v1")
    bundles = [base, load_from_store(store.root, "v2"), load_from_store(store.root, "v3")]
    ids = torch.tensor([base.encode(PROMPT)])
    with torch.inference_mode():
        alone = []
        for bundle in bundles:
            with bundle.step():
                alone.append(bundle.model(input_ids=ids).logits[0])
        names = [BASE_ROWS, "policy-v2", "policy-v3"]
        with base.resident.step(names):
            mixed = base.model(input_ids=ids.repeat(3, 1)).logits
    for row, logits in enumerate(alone):
        torch.testing.assert_close(mixed[row], logits)


def test_two_engines_on_one_base_keep_their_adapters(store):
    v2, v3 = load_from_store(store.root, "v2"), load_from_store(store.root, "v3")
    expected = {v: reference_greedy(store, v, PROMPT, 10) for v in ("v2", "v3")}
    engines = [GenerationEngine(b, EngineSettings(max_batch_size=4, batch_wait_s=0.0)).start() for b in (v2, v3)]
    results: list[tuple[str, str]] = []

    def client(engine: GenerationEngine) -> None:
        for _ in range(6):
            result = _generate(engine)
            results.append((result.model_version, result.sequences[0].text))

    threads = [threading.Thread(target=client, args=(e,)) for e in engines for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for e in engines:
            e.stop()
    assert len(results) == 36
    assert all(text == expected[version] for version, text in results)


def test_unused_adapters_are_unloaded_and_the_base_unwrapped(store):
    base = load_from_store(store.root, "v1")
    resident = base.resident
    ids = torch.tensor([base.encode(PROMPT)])
    with torch.inference_mode():
        before = base.model(input_ids=ids).logits
    v2, v3 = load_from_store(store.root, "v2"), load_from_store(store.root, "v3")
    again = load_from_store(store.root, "v2")  # a second bundle of a loaded adapter loads nothing
    assert resident.adapter_loads == 2
    del v2
    gc.collect()
    assert collect_unused() == []  # ``again`` still names policy-v2
    del again
    gc.collect()
    assert collect_unused() == ["policy-v2"] and resident.adapters == {"policy-v3"}
    del v3
    gc.collect()
    assert collect_unused() == ["policy-v3"]
    assert resident.peft is None and resident.adapters == set()
    assert not any("lora" in type(m).__name__.lower() for m in base.model.modules())
    with torch.inference_mode():
        torch.testing.assert_close(base.model(input_ids=ids).logits, before)
    assert load_from_store(store.root, "v2").model is base.model  # and an adapter can come back


def test_a_failed_adapter_load_leaves_the_base_as_it_was(store):
    base = load_from_store(store.root, "v1")
    ids = torch.tensor([base.encode(PROMPT)])
    with torch.inference_mode():
        before = base.model(input_ids=ids).logits
    version = store.version_dir("policy", "v2")
    (version / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="LoRA adapter"):
        load_bundle(version, "v2")
    assert base.resident.peft is None and not any("lora" in type(m).__name__.lower() for m in base.model.modules())
    config = json.loads((store.version_dir("policy", "v3") / "adapter_config.json").read_text())
    config["modules_to_save"] = ["lm_head"]
    (store.version_dir("policy", "v3") / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="modules_to_save"):
        load_bundle(store.version_dir("policy", "v3"), "v3")
    with torch.inference_mode():
        torch.testing.assert_close(base.model(input_ids=ids).logits, before)


def test_model_sampling_defaults_from_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"temperature": 0.6, "top_p": 0.9, "top_k": 20, "max_new_tokens": 2048, "repetition_penalty": 1.1})
    )
    assert model_sampling_defaults(tmp_path) == {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "max_new_tokens": 2048}
    server = SamplingDefaults(max_new_tokens=64, temperature=1.0, max_new_tokens_cap=512)
    merged = server.with_model(model_sampling_defaults(tmp_path))
    assert (merged.temperature, merged.top_p, merged.top_k, merged.max_new_tokens) == (0.6, 0.9, 20, 512)
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.7, "top_p": 7}))
    assert model_sampling_defaults(tmp_path) == {"temperature": 0.0}  # greedy, as generate(); a bad top_p ignored
    assert model_sampling_defaults(tmp_path / "missing") == {}
    assert server.with_model({}) is server


def test_unset_fields_take_the_serving_versions_defaults(store):
    gen = {"do_sample": False, "max_new_tokens": 5, "top_k": 7}
    version = write_adapter_version(store, seed=3, generation_config=gen)  # v4
    base, tuned = load_from_store(store.root, "v1"), load_from_store(store.root, version)
    server = SamplingDefaults(max_new_tokens=9, temperature=1.0)
    engine = GenerationEngine(base, EngineSettings(max_batch_size=2, sampling=server)).start()
    try:
        first = engine.submit(PROMPT, SamplingRequest(seed=1))
        assert (first.spec.temperature, first.spec.max_new_tokens, first.spec.top_k) == (1.0, 9, 0)  # the server's
        assert first.result(60).model_version == "v1"
        engine.swap(tuned)
        handle = engine.submit(PROMPT, SamplingRequest())
        result = handle.result(60)
        assert (handle.spec.temperature, handle.spec.max_new_tokens, handle.spec.top_k) == (0.0, 5, 7)
        assert result.sequences[0].text == reference_greedy(store, version, PROMPT, 5)
        explicit = engine.submit(PROMPT, SamplingRequest(temperature=0.5, max_new_tokens=3, seed=2))
        assert (explicit.spec.temperature, explicit.spec.max_new_tokens) == (0.5, 3)  # the request wins
        explicit.result(60)
    finally:
        engine.stop()
    servicer = PolicyServicer(PolicyConfig(model_store=str(store.root), default_max_new_tokens=9), publisher=None)
    servicer.engine = engine
    info = servicer.GetModelInfo(None, None)
    assert (info.default_sampling.temperature, info.default_sampling.max_new_tokens) == (0.0, 5)
    assert info.default_sampling.top_k == 7 and info.version == version
    engine.swap(base)
    assert servicer.GetModelInfo(None, None).default_sampling.max_new_tokens == 9


def test_a_request_queued_before_a_swap_takes_the_new_versions_defaults(store):
    version = write_adapter_version(store, seed=4, generation_config={"do_sample": False, "max_new_tokens": 4})
    base, tuned = load_from_store(store.root, "v1"), load_from_store(store.root, version)
    engine = GenerationEngine(base, EngineSettings(sampling=SamplingDefaults(max_new_tokens=9)))
    queued = engine.submit(PROMPT, SamplingRequest())  # resolved against v1: the server's defaults
    pinned = engine.submit(PROMPT, SamplingRequest(temperature=0.0, max_new_tokens=6))
    assert (queued.spec.temperature, queued.spec.max_new_tokens) == (1.0, 9)
    engine.swap(tuned)  # before the scheduler took them
    engine.start()
    try:
        result = queued.result(60)
        assert result.model_version == version
        assert (queued.spec.temperature, queued.spec.max_new_tokens) == (0.0, 4)
        assert result.sequences[0].text == reference_greedy(store, version, PROMPT, 4)
        assert pinned.result(60).sequences[0].text == reference_greedy(store, version, PROMPT, 6)
    finally:
        engine.stop()
