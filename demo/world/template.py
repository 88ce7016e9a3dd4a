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
