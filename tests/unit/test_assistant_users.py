"""The assistant's simulated users: utility on free text, disagreement, Bradley-Terry
choices, corrections in their own length, the feedback they send, the taste plug-in."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from assistant.dataset import load_items
from assistant.feedback import Answer, FeedbackMix, assess, feedback_kind, parse_feedback_mix, react
from assistant.judge import judge
from assistant.users import (
    DEFAULT_WEIGHTS,
    UserProfile,
    choose,
    default_utility,
    load_preference,
    make_population,
    utility,
    write_correction,
)
from shared.proto.rlhf.v1 import events_pb2

ITEMS = load_items()


def _user(**changes) -> UserProfile:
    typical = UserProfile(
        user_id="typical", weights=dict(DEFAULT_WEIGHTS), preferred_words=20.0, likes_small_talk=False, noise=0.0,
        tie_margin=0.01, compare_rate=0.5, rate_rate=1.0, correct_rate=1.0, flag_rate=1.0, thumb_bar=0.8,
        rates_with_score=False,
    )  # fmt: skip
    return dataclasses.replace(typical, **changes)


def _wrong_version(item) -> str:
    if item.numeric:
        answer = item.answers[0]
        return item.reference.replace(answer, str(float(answer) + 7).removesuffix(".0"))
    if item.answers:
        text = item.reference
        for accepted in sorted(item.answers, key=len, reverse=True):
            text = re.sub(re.escape(accepted), item.wrong[0], text, flags=re.IGNORECASE)
        return text
    return "It depends on many things, and everyone does it differently."


def _flawed(item) -> dict[str, str]:
    ref = item.reference
    return {
        "wrong": _wrong_version(item),
        "small talk": f"Great question! {ref} I hope this helps! Let me know if you have any other questions.",
        "refusal": "I'm sorry, but I can't help with that request.",
        "repetition": " ".join([ref] * 5),
        "garbage": ref + " ▓▓▓▓ <|im_end|><|im_start|> ⌘⌘⌘⌘ \x00\x01\x02",
        "unfinished": ref + " Also, another thing you should know is that the",
    }


@pytest.mark.parametrize("category", sorted({i.category for i in ITEMS}))
def test_known_good_answers_beat_every_flaw(category):
    for item in [i for i in ITEMS if i.category == category][:8]:
        user = _user(preferred_words=float(len(item.reference.split())))
        good = utility(default_utility, user, item, item.reference)
        for flaw, text in _flawed(item).items():
            bad = utility(default_utility, user, item, text)
            assert good > bad, (item.question, flaw, text, good, bad)


def test_population_is_seeded_and_varied():
    assert make_population(20, seed=3) == make_population(20, seed=3)
    assert make_population(20, seed=3) != make_population(20, seed=4)
    users = make_population(200, seed=0)
    lengths = [u.preferred_words for u in users]
    assert min(lengths) < 10 and max(lengths) > 50
    assert 0.05 < sum(u.likes_small_talk for u in users) / len(users) < 0.4


def test_users_disagree_on_some_pairs():
    users = make_population(100, seed=1)
    item = next(i for i in ITEMS if i.category == "howto")
    short, long = item.reference.split(". ")[0] + ".", item.reference
    chatty = f"Great question! {item.reference} Hope this helps!"
    for a, b in ((short, long), (long, chatty)):
        prefers_a = [utility(default_utility, u, item, a) > utility(default_utility, u, item, b) for u in users]
        assert 0.05 < sum(prefers_a) / len(users) < 0.95, (a, b, sum(prefers_a))


def test_bradley_terry_choice_with_ties_and_noise():
    exact, noisy = _user(noise=0.0, tie_margin=0.02), _user(noise=0.2, tie_margin=0.02)
    rng = random.Random(0)
    assert choose(exact, 0.9, 0.5, rng) == 0 and choose(exact, 0.5, 0.9, rng) == 1
    assert choose(exact, 0.80, 0.79, rng) is None
    picks = [choose(noisy, 0.6, 0.5, rng) for _ in range(4000)]
    share_a = picks.count(0) / len(picks)
    assert 0.65 < share_a < 0.82  # sigmoid(0.1 / 0.1) = 0.73
    assert [choose(noisy, 0.9, 0.1, rng) for _ in range(200)].count(0) >= 198


def test_corrections_are_correct_and_in_the_users_length():
    item = next(i for i in ITEMS if i.category == "howto" and len(i.reference.split(". ")) >= 2)
    terse, wordy = _user(preferred_words=5.0), _user(preferred_words=80.0)
    short, long = write_correction(terse, item), write_correction(wordy, item)
    assert judge(item, short).good and judge(item, long).good
    assert len(short.split()) < len(long.split()) == len(item.reference.split())
    assert "hope this helps" in write_correction(_user(likes_small_talk=True), item).lower()


def _kinds(events) -> list[str]:
    return sorted(feedback_kind(e) for e in events)


def test_react_prefers_the_better_answer_flags_wrong_ones_and_corrects_when_all_are_bad():
    item = next(i for i in ITEMS if i.category == "arithmetic")
    user = _user()
    good, wrong = assess(user, item, "g1", item.reference), assess(user, item, "g2", _wrong_version(item))
    events = react(user, item, [wrong, good], random.Random(0))
    assert _kinds(events) == ["flag", "preference"]
    preference = next(e for e in events if feedback_kind(e) == "preference").preference
    assert (preference.chosen_generation_id, preference.rejected_generation_id) == ("g1", "g2")
    assert next(e for e in events if feedback_kind(e) == "flag").flag.category == events_pb2.FLAG_CATEGORY_WRONG
    events = react(user, item, [wrong], random.Random(0))
    assert _kinds(events) == ["correction", "flag", "rating"]
    correction = next(e for e in events if feedback_kind(e) == "correction").correction.response
    assert judge(item, correction).good
    assert react(user, item, [wrong], random.Random(0), parse_feedback_mix("corrections=0,flags=0,ratings=0")) == []
    ranked = react(user, item, [wrong, good, assess(user, item, "g3", item.reference + " I hope")], random.Random(0))
    ranking = next(e for e in ranked if feedback_kind(e) == "ranking").ranking
    assert list(ranking.groups[0].generation_ids) == ["g1"]


def test_feedback_mix_parsing():
    assert parse_feedback_mix("") == FeedbackMix()
    assert parse_feedback_mix("corrections=0, rankings=2").rankings == 2.0
    for bad in ("corrections", "votes=1", "ratings=-1", "ratings=x", "flags=1,flags=2"):
        with pytest.raises(ValueError):
            parse_feedback_mix(bad)


def test_a_custom_taste_plugs_in():
    strict = load_preference("assistant.tastes:strict_utility")
    item = next(i for i in ITEMS if i.category == "capital")
    user = _user()
    assert assess(user, item, "g", item.reference, strict).utility == 1.0
    assert assess(user, item, "g", "I'm sorry, but I can't.", strict).utility == 0.0
    terse = load_preference("assistant.tastes:terse_utility")
    assert isinstance(assess(user, item, "g", item.reference, terse), Answer)
    for spec in ("nocolon", "assistant.tastes:missing"):
        with pytest.raises(ValueError):
            load_preference(spec)
