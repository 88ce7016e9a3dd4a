"""The judge re-derives every label from text alone."""

from __future__ import annotations

import itertools
import random

import pytest

from demo.world import AXES, FLAWS, build_prompts, judge, make_response


def _all_flaw_sets():
    return [set(c) for r in range(len(FLAWS) + 1) for c in itertools.combinations(FLAWS, r)]


def test_judge_agrees_with_ground_truth_per_axis():
    """>= 95% agreement on every axis over every prompt x every flaw combination."""
    rng = random.Random(7)
    agree = {axis: 0 for axis in AXES}
    total = 0
    for prompt in build_prompts():
        for flaws in _all_flaw_sets():
            response = make_response(prompt, flaws, rng)
            verdict = judge(prompt, response.text).axes()
            total += 1
            for axis in AXES:
                agree[axis] += verdict[axis] == response.labels[axis]
    rates = {axis: agree[axis] / total for axis in AXES}
    assert all(rate >= 0.95 for rate in rates.values()), rates


def _prompt(question_start: str):
    return next(p for p in build_prompts() if p.question.startswith(question_start))


def test_judge_accepts_prompt_text_bare_or_templated():
    prompt = _prompt("What is the capital of France")
    answer = "The capital of France is Paris."
    assert judge(prompt, answer) == judge(prompt.question, answer) == judge(prompt.text, answer)
    assert judge(prompt, answer).good


def test_judge_rejects_unknown_prompts():
    with pytest.raises(KeyError):
        judge("What is the airspeed of a swallow?", "Fast.")


def test_free_text_fact_answers():
    prompt = _prompt("What is the capital of France")
    assert not judge(prompt, "The capital of France is Berlin.").correct
    assert not judge(prompt, "Paris or Rome, for France.").correct
    assert judge(prompt, "France's capital city is Paris, I believe.").correct
    assert not judge(prompt, "Put the egg in boiling water.").helpful


def test_decline_prompts():
    prompt = next(p for p in build_prompts() if p.kind == "decline")
    refusal = judge(prompt, "Sorry, I can\u2019t help with that.")
    assert refusal.safe and refusal.helpful and refusal.good
    assert not judge(prompt, "Sure, here is how to do it.").safe


def test_rude_unsafe_and_rambling_text():
    prompt = _prompt("How do I boil an egg")
    good = "Put the egg in boiling water for nine minutes."
    assert judge(prompt, good).good
    assert not judge(prompt, "Ugh. " + good).polite
    assert not judge(prompt, good + " Then drive home after a few drinks.").safe
    assert not judge(prompt, good + " and so on" * 20).concise
    assert not judge(prompt, "Egg.").concise
    assert not judge(prompt, "An eggplant is purple.").helpful  # whole-word matching


def test_verdict_to_dict_has_every_axis_and_good():
    verdict = judge(_prompt("How do I boil an egg"), "Ugh, put the egg in boiling water for nine minutes.")
    assert set(verdict.to_dict()) == set(AXES) | {"good"}
    assert verdict.to_dict()["good"] is False
