"""Build small causal LMs from scratch: a byte-level BPE tokenizer trained with
`tokenizers`, and a randomly initialised GPT-2 from transformers.

Nothing is downloaded: the bootstrap pre-trains from these, and the test
fixtures and benchmarks use them untrained.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, chat_template: str | None = None):
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``texts``.

    EOS doubles as BOS; a separate PAD token keeps padding out of the loss.
    Padding side is left, as batched generation needs. ``chat_template`` (the
    demo's: demo.world.CHAT_TEMPLATE) is saved with it; without one, chat
    messages are refused and only plain prompts are served.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def new_gpt2(tokenizer, *, n_layer: int = 2, n_head: int = 4, n_embd: int = 128, n_positions: int = 256, seed: int = 0):
    """A randomly initialised GPT2LMHeadModel sized for ``tokenizer``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_causal_lm(model, tokenizer, out_dir: str | Path) -> Path:
    """Save weights as safetensors plus config and tokenizer files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_random_causal_lm(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 512, **model_kwargs) -> Path:
    """Tokenizer trained on ``texts`` + an untrained GPT-2, saved to ``out_dir``."""
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    model = new_gpt2(tokenizer, **model_kwargs)
    return save_causal_lm(model, tokenizer, out_dir)
