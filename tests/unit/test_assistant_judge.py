"""The assistant's judge on hand-written answers: correct (known answer, no wrong
one) and clean (no refusal, repetition or degeneration); the gate plug-in."""

from __future__ import annotations

import math

import pytest

from assistant.dataset import Item, load_items
from assistant.judge import find_item, gate_judge, judge


def _item(category: str, question: str, **fields) -> Item:
    return Item(id=f"t-{category}", category=category, messages=({"role": "user", "content": question},), **fields)


TIMES = _item("arithmetic", "What is 17 times 23?", answers=("391",), wrong=("381", "40"))
AUSTRALIA = _item("capital", "What is the capital of Australia?", answers=("Canberra",), wrong=("Sydney", "Paris"))
BRAZIL = _item("capital", "What is the capital of Brazil?", answers=("Brasília", "Brasilia"), wrong=("Rio de Janeiro",))
GOLD = _item("chemistry", "What's the symbol for gold?", answers=("Au",), wrong=("Ag", "Go"), case_sensitive=True)
NOUN = _item("definition", "What is a noun?", key_terms=(("word",), ("person", "people"), ("place",), ("thing",)))
BURN = _item(
    "howto", "How do I treat a burn?", key_terms=(("cool water", "cold water"), ("minutes",)), wrong=("butter",)
)


@pytest.mark.parametrize(
    ("item", "response", "correct", "clean"),
    [
        (TIMES, "17 times 23 is 391.", True, True),
        (TIMES, "The answer is three hundred ninety-one.", True, True),
        (TIMES, "Great question! 17 × 23 = 391. I hope this helps!", True, True),
        (TIMES, "17 × 20 = 340 and 17 × 3 = 51, so 17 × 23 = 391.", True, True),
        (TIMES, "It's 381.", False, True),
        (TIMES, "391? No wait, it is 401.", False, True),
        (TIMES, "I'm sorry, but I can't help with math problems.", False, False),
        (TIMES, "391 391 391 391 391 391 391 391 391 391 391 391", True, False),
        (TIMES, "Multiplying the two numbers together gives us 391 and then we", True, False),
        (TIMES, "391 <|im_end|><|im_start|>user ▓▓▓▓▓▓", True, False),
        (AUSTRALIA, "The capital of Australia is Canberra.", True, True),
        (AUSTRALIA, "Canberra", True, True),
        (AUSTRALIA, "Sydney is the capital of Australia.", False, True),
        (AUSTRALIA, "I'm sorry, but the capital of Australia is Canberra.", True, True),
        (BRAZIL, "It is Brasilia.", True, True),
        (BRAZIL, "The capital of Brazil is Rio de Janeiro.", False, True),
        (GOLD, "The chemical symbol for gold is Au.", True, True),
        (GOLD, "Gold's symbol is Ag.", False, True),
        (NOUN, "A noun is a word that names a person, place or thing.", True, True),
        (NOUN, "A noun is a kind of word.", False, True),
        (BURN, "Run cool water over the burn for ten minutes.", True, True),
        (BURN, "Put butter on it and wait a few minutes under cool water.", False, True),
        (BURN, "", False, False),
    ],
)
def test_verdicts_on_hand_written_answers(item, response, correct, clean):
    verdict = judge(item, response)
    assert (verdict.correct, verdict.clean) == (correct, clean), verdict
    assert verdict.good == (correct and clean)


def test_small_talk_is_counted_but_not_unclean():
    verdict = judge(TIMES, "Great question! It is 391. I hope this helps!")
    assert verdict.small_talk == 2 and verdict.good


def test_rambling_is_not_clean():
    verdict = judge(AUSTRALIA, "The capital of Australia is Canberra. " + "It has many lovely parks and lakes. " * 40)
    assert verdict.correct and not verdict.clean


SMOLLM2_CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
)


def test_the_gate_judge_finds_the_question_in_raw_or_chat_rendered_prompts():
    item = next(i for i in load_items() if i.category == "capital")
    prompts = [item.question, SMOLLM2_CHAT.format(q=item.question), "Tell me a joke about cats."]
    assert find_item(prompts[1]) == item
    scores = gate_judge(prompts, [item.reference, "No idea, sorry.", "Why did the cat sit on the computer?"])
    assert scores[0] == 1.0 and scores[1] == 0.0 and math.isnan(scores[2])
    with pytest.raises(KeyError):
        judge("Tell me a joke about cats.", "no")


def test_the_gate_judge_loads_through_the_trainers_plugin_loader():
    from services.trainer.loop.judge_plugin import load_judge

    assert load_judge("assistant.judge:gate_judge") is gate_judge
