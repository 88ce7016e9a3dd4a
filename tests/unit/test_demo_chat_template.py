"""The demo tokenizer's chat template (demo.world.CHAT_TEMPLATE) renders chat messages to the
"User: ...\\nAssistant:" frame the demo policy is trained in (demo.world.format_prompt)."""

from __future__ import annotations

import pytest

from demo.tiny_lm import train_tokenizer
from demo.world import CHAT_TEMPLATE, build_prompts, format_prompt
from shared.models.prompting import ChatMessage, render_chat


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([p.text for p in build_prompts()[:50]], vocab_size=300, chat_template=CHAT_TEMPLATE)


def test_one_user_message_is_exactly_the_training_frame(tokenizer):
    for prompt in build_prompts()[:20]:
        assert render_chat(tokenizer, [ChatMessage("user", prompt.question)]) == prompt.text
    assert render_chat(tokenizer, [ChatMessage("user", "  How do I boil an egg?\n")]) == format_prompt(
        "How do I boil an egg?"
    )


def test_a_conversation_puts_each_turn_on_its_own_line(tokenizer):
    chat = [
        ChatMessage("system", "Be terse."),
        ChatMessage("user", "q1"),
        ChatMessage("assistant", "a1"),
        ChatMessage("user", "q2"),
    ]
    assert render_chat(tokenizer, chat) == "System: Be terse.\nUser: q1\nAssistant: a1\nUser: q2\nAssistant:"
    assert render_chat(tokenizer, chat[1:3], add_generation_prompt=False) == "User: q1\nAssistant: a1\n"


def test_without_a_template_the_tokenizer_has_none():
    # The test fixtures' tiny GPT-2 (tests/conftest.py) stays a model without one.
    assert not train_tokenizer(["User: hi\nAssistant: hello"] * 3, vocab_size=280).chat_template
