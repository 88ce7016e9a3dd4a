"""The assistant world: a seeded generator of prompts and labelled responses,
the judge that labels any text on the same axes, and the prompt template."""

from demo.world.generator import (
    AXES,
    FLAWS,
    KINDS,
    Prompt,
    Response,
    build_prompts,
    degenerate_response,
    find_prompt,
    make_response,
    preference_pairs,
    pretrain_corpus,
    sample_flaws,
    sft_demonstrations,
    split_prompts,
)
from demo.world.judge import Verdict, judge
from demo.world.template import (
    CHAT_TEMPLATE,
    PROMPT_FRAME,
    PROMPT_TEMPLATE,
    extract_question,
    format_prompt,
    question_key,
)

__all__ = [
    "AXES",
    "CHAT_TEMPLATE",
    "FLAWS",
    "KINDS",
    "PROMPT_FRAME",
    "PROMPT_TEMPLATE",
    "Prompt",
    "Response",
    "Verdict",
    "build_prompts",
    "degenerate_response",
    "extract_question",
    "find_prompt",
    "format_prompt",
    "judge",
    "make_response",
    "preference_pairs",
    "pretrain_corpus",
    "question_key",
    "sample_flaws",
    "sft_demonstrations",
    "split_prompts",
]
