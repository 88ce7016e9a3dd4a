"""Model stores for the fault-injection tests: a tiny policy and reward model
built here (nothing downloaded), copied per test so a test may corrupt its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fault_store_template(tmp_path_factory, tiny_lm_dir) -> Path:
    """policy v1 = the session's tiny random GPT-2; reward v1 = MiniLM with a fresh head (+ ONNX)."""
    from shared.model_store import ModelStore
    from shared.reward_model import export_onnx, new_reward_model, save_reward_model

    store = ModelStore(tmp_path_factory.mktemp("fault-store"))
    store.write_version("policy", lambda path: shutil.copytree(tiny_lm_dir, path, dirs_exist_ok=True))
    model, tokenizer = new_reward_model(seed=0, max_length=48)

    def fill_reward(path):
        save_reward_model(model, tokenizer, path)
        export_onnx(model, tokenizer, path)

    store.write_version("reward", fill_reward)
    return store.root


@pytest.fixture()
def fault_store(fault_store_template, tmp_path) -> Path:
    """This test's own copy of the store."""
    return Path(shutil.copytree(fault_store_template, tmp_path / "store"))
