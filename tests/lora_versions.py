"""LoRA adapter policy versions for tests: PEFT adapters on the tiny GPT-2, and
the reference greedy decode of a version computed with PEFT directly."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from shared.models.prompting import encode_prompt
from shared.models.store import ModelStore


def lora_adapter(base_dir: str | Path, seed: int):
    """A PeftModel with a random (non-zero) LoRA adapter on the model in ``base_dir``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, init_lora_weights=False
    )
    return get_peft_model(base, config)


def store_with_base(root: Path, tiny_lm_dir: Path) -> ModelStore:
    """A store whose policy v1 is the tiny GPT-2 (full weights)."""
    store = ModelStore(root)
    store.write_version("policy", lambda out: shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True))
    store.set_current("policy", "v1")
    return store


def write_adapter_version(store: ModelStore, seed: int, base_version: str = "v1", generation_config=None) -> str:
    """Write a LoRA adapter version on ``base_version``; returns its version."""
    base_dir = store.version_dir("policy", base_version)

    def fill(out: Path) -> None:
        lora_adapter(base_dir, seed).save_pretrained(out)
        (out / "README.md").unlink(missing_ok=True)
        if generation_config is not None:
            import json

            (out / "generation_config.json").write_text(json.dumps(generation_config))

    manifest = store.write_version(
        "policy", fill, parent_version=store.latest("policy") or "", base_version=base_version
    )
    return manifest.version


def write_full_version(store: ModelStore, tiny_lm_dir: Path, seed: int) -> str:
    """A full-weights version: a re-seeded GPT-2 with the tiny model's tokenizer."""
    from transformers import AutoTokenizer

    from demo.tiny_lm import new_gpt2, save_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir, local_files_only=True)

    def fill(out: Path) -> None:
        model = new_gpt2(tokenizer, n_layer=2, n_head=2, n_embd=64, n_positions=128, seed=seed)
        save_causal_lm(model, tokenizer, out)

    return store.write_version("policy", fill, parent_version=store.latest("policy") or "").version


def reference_greedy(store: ModelStore, version: str, prompt: str, max_new_tokens: int) -> str:
    """The greedy completion of ``prompt`` by ``version``, computed with transformers/PEFT alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = store.manifest("policy", version)
    base_dir = store.version_dir("policy", manifest.base_version or version)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    if manifest.is_adapter:
        model = PeftModel.from_pretrained(model, store.version_dir("policy", version))
    model.eval()
    ids = encode_prompt(tokenizer, prompt)
    eos = model.config.eos_token_id
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            token = int(logits.argmax())
            if token == eos:
                break
            out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
