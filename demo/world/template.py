"""The one prompt format the policy is trained with.

Every part that talks to the policy (bootstrap, eval, the simulator, the
trainer) formats prompts with :func:`format_prompt`, so the policy always sees
the same frame it learned in SFT. The reward model and the judge look at the
bare question (:func:`extract_question`), so they accept either form.
"""

from __future__ import annotations

PROMPT_TEMPLATE = "User: {question}\nAssistant:"
_USER_PREFIX = "User:"
_ASSISTANT_SUFFIX = "Assistant:"
# What the reward model strips from a prompt (shared.models.reward.head_config.RewardHeadConfig).
PROMPT_FRAME = (_USER_PREFIX, _ASSISTANT_SUFFIX)
# The frame as the demo tokenizer's chat template (the bootstrap saves it with the tokenizer),
# so chat clients (the front door's /v1/chat/completions, `rlhf sft` messages) reach the demo
# policy in the frame it was trained on: one user message renders to exactly format_prompt(),
# "User: {question}\nAssistant:". Earlier turns go one per line, each role as its own prefix
# ("System: ...", "Assistant: ..."). No whitespace control in it: transformers renders chat
# templates with trim_blocks, which leaves a newline *before* a tag alone.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] | trim }}\n"
    "{% endfor %}{% if add_generation_prompt %}" + _ASSISTANT_SUFFIX + "{% endif %}"
)


def format_prompt(question: str) -> str:
    """``question`` in the policy's prompt frame."""
    return PROMPT_TEMPLATE.format(question=question.strip())


def extract_question(prompt: str) -> str:
    """The bare question of a prompt, whether templated or not."""
    text = prompt.strip()
    if text.startswith(_USER_PREFIX):
        text = text[len(_USER_PREFIX) :]
    if text.endswith(_ASSISTANT_SUFFIX):
        text = text[: -len(_ASSISTANT_SUFFIX)]
    return text.strip()


def question_key(prompt: str) -> str:
    """The bare question, case- and whitespace-folded: one key however the prompt was framed."""
    return " ".join(extract_question(prompt).lower().split())
