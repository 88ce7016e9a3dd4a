"""The one place a prompt becomes text and tokens, for every part that talks to a policy.

Serving (services.policy), PPO rollouts, SFT and PPO-ptx demonstrations, and
evaluation (the gate, `rlhf sft`) all go through :func:`encode_prompt`, so the
tokens a policy is trained on are the tokens it is served. A chat request's
``messages`` are rendered once, with the model's own chat template
(:func:`render_chat`); the rendered text is what a GenerationEvent carries, so
the trainer rebuilds the exact prompt from the event.

No torch and no grpc here: a tokenizer is any Hugging Face tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

CHAT_ROLES = ("system", "user", "assistant", "tool")


class PromptError(ValueError):
    """A prompt or chat that cannot be rendered; ``field`` names what to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True,
                field: str = "messages") -> str:
    """``messages`` rendered with the tokenizer's chat template, ending (by default)
    where the assistant's answer starts. Raises PromptError naming the field."""
    if not messages:
        raise PromptError(field, "is empty; send at least one message")
    for i, message in enumerate(messages):
        if message.role not in CHAT_ROLES:
            raise PromptError(f"{field}[{i}].role", f"is {message.role!r}; expected one of {', '.join(CHAT_ROLES)}")
        if not message.content.strip():
            raise PromptError(f"{field}[{i}].content", "must not be empty")
    if not has_chat_template(tokenizer):
        raise PromptError(field, "this model has no chat template (tokenizer_config.json chat_template); "
                          "send a plain `prompt` instead")
    return tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                         tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt as the model should see it: with the special tokens
    the tokenizer adds in front (a BOS for Llama-style tokenizers; nothing for
    GPT-2), but never twice when the text already starts with them (a chat
    template that writes its own BOS)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    # Tokenizers that append EOS to every encoding (some T5/BART-style ones) would
    # tell the model the prompt is over before the answer starts.
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos != bos and len(ids) >= 2 and ids[-1] == eos and not text.endswith(
            getattr(tokenizer, "eos_token", None) or "\0"):
        ids = ids[:-1]
    return ids
