"""Tiny GGUF files, written here with the `gguf` package's GGUFWriter, for tests of `rlhf import policy FILE.gguf`.

:func:`build_tiny_gguf` writes a random 2-layer Llama (tests.foreign_models: hidden 32,
4 heads, 2 KV heads) with its byte-level BPE tokenizer the way llama.cpp's
convert_hf_to_gguf.py does, so that transformers' GGUF loader reads it back:

- metadata: ``general.*``, the ``llama.*`` hyper-parameters and ``tokenizer.ggml.*``
  (model "gpt2" = byte-level BPE: tokens in id order, token types with the special
  tokens as CONTROL, merges, bos/eos/unk/pad ids, add_bos_token) and
  ``tokenizer.chat_template``;
- tensors named as llama.cpp names them (``token_embd``, ``blk.N.attn_q`` ...,
  ``output_norm``, and ``output`` only when the embeddings are not tied), with the
  query and key rows permuted as llama.cpp permutes them (transformers undoes it).

It returns the Hugging Face model and tokenizer it was written from: the reference an
imported model must match.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.foreign_models import BOS, CHAT_TEMPLATE_NO_BOS, EOS, PAD, UNK, tiny_llama_tokenizer

# GGUF token types (llama.cpp's llama_token_type).
NORMAL, CONTROL = 1, 3


def llama_cpp_permute(weights, n_head: int):
    """What convert_hf_to_gguf.py does to q_proj / k_proj rows (rotary halves interleaved)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _write_tokenizer(writer, tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "token ids must be 0..n-1"
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    specials = {BOS, EOS, PAD, UNK}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if t in specials else NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _tensors(model, tied: bool):
    """(llama.cpp name, numpy array) of every weight."""
    config = model.config
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        yield f"blk.{i}.attn_norm.weight", state[layer + "input_layernorm.weight"]
        yield (
            f"blk.{i}.attn_q.weight",
            llama_cpp_permute(state[layer + "self_attn.q_proj.weight"], config.num_attention_heads),
        )
        yield (
            f"blk.{i}.attn_k.weight",
            llama_cpp_permute(state[layer + "self_attn.k_proj.weight"], config.num_key_value_heads),
        )
        yield f"blk.{i}.attn_v.weight", state[layer + "self_attn.v_proj.weight"]
        yield f"blk.{i}.attn_output.weight", state[layer + "self_attn.o_proj.weight"]
        yield f"blk.{i}.ffn_norm.weight", state[layer + "post_attention_layernorm.weight"]
        yield f"blk.{i}.ffn_gate.weight", state[layer + "mlp.gate_proj.weight"]
        yield f"blk.{i}.ffn_up.weight", state[layer + "mlp.up_proj.weight"]
        yield f"blk.{i}.ffn_down.weight", state[layer + "mlp.down_proj.weight"]
    yield "output_norm.weight", state["model.norm.weight"]
    if not tied:
        yield "output.weight", state["lm_head.weight"]


def build_tiny_gguf(
    path: str | Path,
    *,
    tied: bool = True,
    seed: int = 0,
    architecture: str = "llama",
    sampling: dict[str, float] | None = None,
    chat_template: str | None = CHAT_TEMPLATE_NO_BOS,
):
    """Write a tiny Llama GGUF (F32 tensors) to ``path``; returns (path, HF model, HF tokenizer).

    ``architecture`` other than "llama" writes the same file under that name (for the
    unsupported-architecture error); ``sampling`` sets general.sampling.{temp,top_p,top_k}."""
    import gguf
    import torch
    from transformers import LlamaForCausalLM

    from tests.foreign_models import _llama_config

    tokenizer = tiny_llama_tokenizer(chat_template=chat_template)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer, tie_word_embeddings=tied)).eval()
    with torch.no_grad():  # norms away from 1 and a visible lm_head, so a swapped tensor shows in the logits
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * (0.5 if "norm" in name else 0.05))
    config = model.config
    path = Path(path)
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name("tiny-llama-test")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    for key, value in (sampling or {}).items():
        getattr(writer, f"add_sampling_{key}")(value)
    _write_tokenizer(writer, tokenizer)
    for name, array in _tensors(model, tied):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model, tokenizer
