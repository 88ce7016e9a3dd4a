"""Prepacked linear layers (services/policy/packed_linear.py) compute what the
plain ones do, keep tied weights tied, and still take LoRA adapters."""

from __future__ import annotations

import copy

import pytest
import torch

from services.policy.packed_linear import PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 27).reshape(2, 12)
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_packed_layers_give_the_same_logits_and_keep_tied_weights():
    plain = _tiny_llama()
    packed = copy.deepcopy(plain)
    count = pack_linears(packed)
    assert count == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the output layer
    assert isinstance(packed.lm_head, PackedLinear) and isinstance(packed.lm_head, torch.nn.Linear)
    assert packed.lm_head.weight is packed.model.embed_tokens.weight
    assert set(packed.state_dict()) == set(plain.state_dict())
    assert torch.allclose(_logits(packed), _logits(plain), atol=1e-5)


def test_a_lora_adapter_applies_on_packed_layers():
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    plain = _tiny_llama()
    packed = copy.deepcopy(plain)
    pack_linears(packed)
    torch.manual_seed(1)
    plain_lora = get_peft_model(plain, config)
    torch.manual_seed(1)
    packed_lora = get_peft_model(packed, config)
    with_adapter = _logits(packed_lora)
    assert torch.allclose(with_adapter, _logits(plain_lora), atol=1e-5)
    with packed_lora.disable_adapter():
        assert not torch.allclose(_logits(packed_lora), with_adapter, atol=1e-3)  # the adapter did change them
