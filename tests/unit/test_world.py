"""The assistant world generator: deterministic, labelled, split by prompt."""

from __future__ import annotations

import random

import pytest

from demo.world import (
    AXES,
    FLAWS,
    KINDS,
    build_prompts,
    extract_question,
    find_prompt,
    format_prompt,
    make_response,
    preference_pairs,
    pretrain_corpus,
    sft_demonstrations,
    split_prompts,
)
from demo.world.generator import labels_for


def test_every_kind_is_in_both_splits():
    prompts = build_prompts()
    for kind in KINDS:
        splits = {p.split for p in prompts if p.kind == kind}
        assert splits == {"train", "heldout"}, kind


def test_split_is_by_prompt_and_disjoint():
    prompts = build_prompts()
    train = {p.question for p in split_prompts(prompts, "train")}
    heldout = {p.question for p in split_prompts(prompts, "heldout")}
    assert train and heldout and not train & heldout
    assert len(train) + len(heldout) == len(prompts)
    assert 0.15 < len(heldout) / len(prompts) < 0.35


def test_generation_is_seeded():
    prompts = split_prompts(build_prompts(), "train")[:10]
    assert pretrain_corpus(
        prompts, seed=3, dialogues_per_prompt=2, flaw_probability=0.3, statement_repeats=1, wrong_fraction=0.1
    ) == pretrain_corpus(
        prompts, seed=3, dialogues_per_prompt=2, flaw_probability=0.3, statement_repeats=1, wrong_fraction=0.1
    )
    assert build_prompts(seed=1) != build_prompts(seed=2)


def test_flawless_responses_are_good_and_short():
    rng = random.Random(0)
    for prompt in build_prompts():
        response = make_response(prompt, (), rng)
        assert response.good, (prompt.question, response.text)
        assert len(response.text.split()) <= 22


@pytest.mark.parametrize("flaw,axis", list(zip(FLAWS, AXES)))
def test_each_flaw_breaks_its_axis(flaw, axis):
    rng = random.Random(1)
    for prompt in build_prompts():
        if prompt.kind == "decline" and flaw == "wrong":
            continue  # a decline prompt asks for no fact; complying is the unsafe flaw
        response = make_response(prompt, {flaw}, rng)
        assert not response.labels[axis], (prompt.question, flaw, response.text)


def test_decline_prompts_complying_is_unsafe():
    prompt = next(p for p in build_prompts() if p.kind == "decline")
    complied = make_response(prompt, {"unsafe"}, random.Random(0))
    assert not complied.labels["safe"] and complied.labels["helpful"]


def test_labels_cover_every_axis():
    prompt = build_prompts()[0]
    assert set(labels_for(prompt, frozenset(), 10)) == set(AXES)


def test_template_round_trip():
    prompt = build_prompts()[0]
    assert prompt.text == format_prompt(prompt.question)
    assert prompt.text.startswith("User: ") and prompt.text.endswith("\nAssistant:")
    assert extract_question(prompt.text) == prompt.question
    assert find_prompt(prompt.text) == prompt
    assert find_prompt(prompt.question.upper()) == prompt
    assert find_prompt("What is the meaning of life?") is None


def test_sft_demonstrations_are_good():
    from demo.world import judge

    demos = sft_demonstrations(split_prompts(build_prompts(), "train"), seed=0, per_prompt=1)
    assert all(judge(p, r).good for p, r in demos)


def test_preference_pairs_prefer_fewer_flaws():
    from demo.world import judge

    pairs = preference_pairs(split_prompts(build_prompts(), "train")[:30], seed=0, per_prompt=4)
    assert len(pairs) > 60
    for prompt, chosen, rejected in pairs:
        c, r = judge(prompt, chosen).axes(), judge(prompt, rejected).axes()
        assert sum(c.values()) > sum(r.values())
        assert all(c[a] for a in AXES if r[a])  # rejected is never better on any axis


def test_unknown_flaw_is_refused():
    with pytest.raises(ValueError, match="unknown flaws"):
        make_response(build_prompts()[0], {"sarcastic"}, random.Random(0))


def test_degenerate_responses_are_judged_bad_and_become_hard_negatives():
    import random

    from demo.world import build_prompts, degenerate_response, judge, preference_pairs, split_prompts

    prompts = [p for p in split_prompts(build_prompts(0, 0.25), "train") if p.kind != "decline"]
    rng = random.Random(3)
    assert not any(judge(p, degenerate_response(p, rng)).good for p in prompts)
    plain = preference_pairs(prompts, seed=1, per_prompt=4)
    by_text = {p.text: p for p in prompts}
    hardened = preference_pairs(prompts, seed=1, per_prompt=4, degenerate_fraction=1.0)
    assert len(hardened) == 4 * len(prompts), "every pair rejects a degenerate response"
    for text, chosen, rejected in hardened:
        assert judge(by_text[text], chosen).good and not judge(by_text[text], rejected).good
    assert preference_pairs(prompts, seed=1, per_prompt=4) == plain, "seeded: the default is unchanged"
