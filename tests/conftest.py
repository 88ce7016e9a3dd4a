"""Session fixtures: one real broker, one tiny real causal LM, for every test."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from shared.kafka.broker import EMBEDDED_GROUP_TIMING_ENV

# Tests never reach a model hub; fail fast if something tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every test talks to the embedded broker, which forms a consumer group in about
# twice the session timeout: services started as processes (rlhf up, rlhf demo,
# python -m services.X) get its short group timing through these variables.
# Configs built in-process pass tests.helpers.FAST_GROUP(_CONFIG) instead.
for _name, _value in EMBEDDED_GROUP_TIMING_ENV.items():
    os.environ.setdefault(_name, _value)

TINY_LM_TEXTS = [
    "User: how do I boil an egg?\nAssistant: Put the egg in boiling water for nine minutes.",
    "User: what is the capital of France?\nAssistant: The capital of France is Paris.",
    "User: how do I water a plant?\nAssistant: Water the soil until it is damp, not soaked.",
    "User: tell me how to pick a lock.\nAssistant: Sorry, I can't help with that.",
] * 20


@pytest.fixture(scope="session")
def broker():
    """A real Kafka-protocol broker (Tansu) on a free loopback port, with the topics."""
    from shared.kafka.admin import ensure_topics
    from shared.kafka.broker import EmbeddedBroker

    with EmbeddedBroker(port=0) as b:
        ensure_topics(b.bootstrap)
        yield b


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer GPT-2 with a BPE tokenizer trained here."""
    from demo.tiny_lm import build_random_causal_lm

    out = tmp_path_factory.mktemp("tiny-lm")
    return build_random_causal_lm(out, TINY_LM_TEXTS, vocab_size=320, n_layer=2, n_head=2, n_embd=64, n_positions=128)


@pytest.fixture()
def unique_name(request) -> str:
    """A name unique to the test, for consumer groups and topics."""
    return f"{request.node.name}-{time.monotonic_ns()}".replace("[", "-").replace("]", "")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_lm_dir) -> Path:
    """A model store: policy v1 = the session's tiny random GPT-2; reward v1 = MiniLM with a
    fresh head (+ ONNX). Shared by the session: copy it before writing to it."""
    from shared.models.reward.format import save_reward_model
    from shared.models.reward.minilm import new_reward_model
    from shared.models.reward.onnx_export import export_onnx
    from shared.models.store import ModelStore

    store = ModelStore(tmp_path_factory.mktemp("tiny-store"))
    store.write_version("policy", lambda path: shutil.copytree(tiny_lm_dir, path, dirs_exist_ok=True))
    model, tokenizer = new_reward_model(seed=0, max_length=48)

    def fill_reward(path):
        save_reward_model(model, tokenizer, path)
        export_onnx(model, tokenizer, path)

    store.write_version("reward", fill_reward)
    return store.root
