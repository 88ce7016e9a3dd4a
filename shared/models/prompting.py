"""The one place a prompt becomes text and tokens, for every part that talks to a policy.

Serving (services.policy), PPO rollouts, SFT and PPO-ptx demonstrations, and
evaluation (the gate, `rlhf sft`) all go through :func:`encode_prompt`, so the
tokens a policy is trained on are the tokens it is served. A chat request's
``messages`` are rendered once, with the model's own chat template
(:func:`render_chat`); the rendered text is what a GenerationEvent carries, so
the trainer rebuilds the exact prompt from the event.

A demonstration (an SFT example, a user's correction) is a prompt plus the
response the policy should have given; :func:`encode_demonstration_ids` turns
it into the tokens the policy would have sampled for that response (the rule
is in its docstring).

No torch and no grpc here: a tokenizer is any Hugging Face tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def check_messages(
    messages: Sequence[ChatMessage], *, field: str = "messages", max_messages: int | None = None
) -> None:
    """Raise PromptError naming the first bad message (``messages[i].role`` ...)."""
    if not messages:
        raise PromptError(field, "is empty; send at least one message")
    if max_messages is not None and len(messages) > max_messages:
        raise PromptError(field, f"has {len(messages)} messages; the limit is {max_messages}")
    for i, message in enumerate(messages):
        if message.role not in CHAT_ROLES:
            raise PromptError(f"{field}[{i}].role", f"is {message.role!r}; expected one of {', '.join(CHAT_ROLES)}")
        if not message.content.strip():
            raise PromptError(f"{field}[{i}].content", "must not be empty")


def render_chat(
    tokenizer,
    messages: Sequence[ChatMessage],
    *,
    add_generation_prompt: bool = True,
    field: str = "messages",
    max_messages: int | None = None,
) -> str:
    """``messages`` rendered with the tokenizer's chat template, ending (by default)
    where the assistant's answer starts. Raises PromptError naming the field."""
    from jinja2.exceptions import TemplateError

    check_messages(messages, field=field, max_messages=max_messages)
    if not has_chat_template(tokenizer):
        raise PromptError(
            field,
            "this model has no chat template (tokenizer_config.json chat_template); send a plain `prompt` instead",
        )
    try:
        text = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except TemplateError as exc:  # templates refuse some orders, e.g. roles that do not alternate
        raise PromptError(field, f"the model's chat template refused them: {exc}") from exc
    if not isinstance(text, str) or not text:
        raise PromptError(field, "the model's chat template rendered them to no text")
    return text


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
    if (
        eos is not None
        and eos != bos
        and len(ids) >= 2
        and ids[-1] == eos
        and not text.endswith(getattr(tokenizer, "eos_token", None) or "\0")
    ):
        ids = ids[:-1]
    return ids


def keep_last_tokens(tokenizer, ids: list[int], max_tokens: int) -> list[int]:
    """At most ``max_tokens`` of a prompt's ids, cut from the left (the end of a
    prompt is where the answer starts), keeping a leading BOS: a model trained
    with one expects it at position 0 whatever the prompt's length."""
    if len(ids) <= max_tokens:
        return list(ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids and ids[0] == bos and max_tokens >= 2:
        return [bos] + list(ids[len(ids) - max_tokens + 1 :])
    return list(ids[len(ids) - max_tokens :])


def response_separator(prompt: str) -> str:
    """What goes between a prompt and a demonstrated response: nothing when the
    prompt ends in whitespace (a chat template's generation prompt ends in
    "\\n") or is empty, otherwise one space ("Assistant:" + " answer")."""
    return "" if not prompt or prompt[-1].isspace() else " "


def encode_demonstration_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) of a demonstration, without truncation or EOS.

    The rule: the response is ``response.strip()`` joined to the prompt by
    :func:`response_separator`, and its ids are the tail of
    ``encode_prompt(prompt + separator + response)`` after ``encode_prompt(prompt)``:
    the tokens a tokenizer gives that text in context, which is what a policy
    served ``encode_prompt(prompt)`` samples to write it (a SentencePiece
    tokenizer, for one, encodes a word differently at the start of a text than
    after a newline). Only when the joined text's tokens do not start with the
    prompt's (a merge across the boundary) is the response encoded on its own."""
    text = response_separator(prompt) + response.strip()
    prompt_ids = encode_prompt(tokenizer, prompt)
    joined = encode_prompt(tokenizer, prompt + text)
    if len(joined) > len(prompt_ids) and joined[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, joined[len(prompt_ids) :]
    return prompt_ids, list(tokenizer(text, add_special_tokens=False)["input_ids"])
