"""The simulator's feedback mix, its rankings, and corrections written in the user's own taste."""

from __future__ import annotations

import argparse
import random

import pytest

from demo.simulation import Answer, SimulationStats, make_population, react, weighted_axes_utility
from demo.tastes import has_small_talk, no_small_talk_utility
from demo.user_feedback import (
    CORRECTION_CANDIDATES,
    FeedbackMix,
    answers_to_show,
    best_in_taste,
    judged_utility,
    parse_feedback_mix,
    rank_answers,
)
from demo.world import FLAWS, Verdict, build_prompts, judge, make_response
from shared.feedback_rules import feedback_problems, fill_defaults

GOOD = Verdict(helpful=True, polite=True, correct=True, safe=True, concise=True)


def test_the_mix_flag_parses_kinds_and_refuses_what_it_cannot_use():
    assert parse_feedback_mix("") == FeedbackMix()
    assert parse_feedback_mix("corrections=0, rankings=2.5") == FeedbackMix(corrections=0.0, rankings=2.5)
    for spec, words in [
        ("correction=0", "KIND=MULTIPLIER with KIND one of comparisons, rankings"),
        ("corrections", "KIND=MULTIPLIER"),
        ("flags=-1", "flags must be a finite number >= 0"),
        ("flags=lots", "flags must be a finite number >= 0"),
        ("flags=1,flags=0", "flags is given twice"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_feedback_mix(spec)


def test_the_cli_refuses_a_bad_mix_with_the_flags_name():
    from rlhf_cli.simulate_cmd import add_simulation_arguments, simulator_config

    parser = argparse.ArgumentParser()
    add_simulation_arguments(parser)
    with pytest.raises(SystemExit, match="--feedback-mix"):
        simulator_config(parser.parse_args(["--feedback-mix", "thumbs=0"]), "a:1", "b:2")
    config = simulator_config(parser.parse_args(["--feedback-mix", "corrections=0"]), "a:1", "b:2")
    assert config.feedback_mix.corrections == 0.0


def test_the_mix_sets_how_many_answers_the_app_asks_for():
    rng = random.Random(1)
    usual = [answers_to_show(0.6, FeedbackMix(), rng) for _ in range(4000)]
    assert {1, 2, 3, 4} <= set(usual)
    assert 0.6 * 0.25 * 0.8 < sum(n >= 3 for n in usual) / len(usual) < 0.6 * 0.25 * 1.2
    no_rankings = [answers_to_show(0.6, FeedbackMix(rankings=0), rng) for _ in range(2000)]
    assert max(no_rankings) == 2
    only_single = [answers_to_show(0.6, FeedbackMix(rankings=0, comparisons=0), rng) for _ in range(500)]
    assert set(only_single) == {1}


def test_corrections_off_means_none_whatever_else_is_sent():
    users = make_population(20, seed=3)
    rng = random.Random(3)
    prompts = build_prompts()
    kinds: set[str] = set()
    for i in range(1500):
        user, prompt = rng.choice(users), rng.choice(prompts)
        answers = []
        for j in range(rng.choice((1, 2, 3))):
            text = make_response(prompt, [f for f in FLAWS if rng.random() < 0.4], rng).text
            answers.append(Answer(f"g{i}-{j}", text, judge(prompt, text)))
        kinds |= {e.WhichOneof("kind") for e in react(user, prompt, answers, rng, mix=FeedbackMix(corrections=0))}
    assert "correction" not in kinds and {"rating", "preference", "ranking", "flag"} <= kinds


def test_a_ranking_orders_by_utility_ties_equal_ones_and_noise_swaps_places():
    rng = random.Random(0)
    assert rank_answers([0.2, 0.9, 0.5, 0.9], noise=0.0, rng=rng) == [[1, 3], [2], [0]]
    assert rank_answers([0.5, 0.5, 0.5], noise=0.0, rng=rng) == []  # all tied: nothing to say
    swapped = sum(rank_answers([0.9, 0.1], noise=0.3, rng=rng) == [[1], [0]] for _ in range(2000))
    assert 0.25 < swapped / 2000 < 0.35


def test_a_simulated_ranking_is_a_valid_event_best_first():
    user = make_population(1, seed=0, mean_noise=0.0)[0]
    prompt = build_prompts()[0]
    texts = [make_response(prompt, flaws, random.Random(i)).text for i, flaws in enumerate([(), ("rude",), ()])]
    answers = [Answer(f"g{i}", t, judge(prompt, t)) for i, t in enumerate(texts)]
    [event] = [e for e in react(user, prompt, answers, random.Random(0)) if e.WhichOneof("kind") == "ranking"]
    fill_defaults(event)
    assert feedback_problems(event) == []
    groups = [list(g.generation_ids) for g in event.ranking.groups]
    assert groups[-1] == ["g1"] and sorted(groups[0]) == ["g0", "g2"]  # both good answers tie on top


def test_a_users_correction_is_the_best_candidate_under_their_own_taste():
    user = make_population(1, seed=0)[0]
    prompt = next(p for p in build_prompts() if p.kind == "howto")
    utility = judged_utility(no_small_talk_utility, user, prompt)
    for seed in range(20):
        replay = random.Random(seed)  # the same draws best_in_taste makes
        candidates = [make_response(prompt, (), replay).text for _ in range(CORRECTION_CANDIDATES)]
        correction = best_in_taste(prompt, utility, random.Random(seed))
        assert correction in candidates and utility(correction) == max(utility(c) for c in candidates)
        assert judge(prompt, correction).good
    assert any(has_small_talk(c) for c in candidates), "the house style makes small talk; the user does not"


def test_corrections_in_taste_drop_what_the_user_dislikes():
    user = make_population(1, seed=0)[0]
    prompts = [p for p in build_prompts() if p.kind == "howto"][:30]
    bad_text = "Whatever."

    def corrections(preference) -> list[str]:
        rng = random.Random(9)
        eager = type(user)(**{**user.__dict__, "correct_rate": 1.0, "flag_rate": 0.0})
        out = []
        for prompt in prompts:
            events = react(eager, prompt, [Answer("g", bad_text, judge(prompt, bad_text))], rng, preference)
            out += [e.correction.response for e in events if e.WhichOneof("kind") == "correction"]
        return out

    house, own = corrections(weighted_axes_utility), corrections(no_small_talk_utility)
    assert sum(map(has_small_talk, house)) > len(house) / 2
    assert sum(map(has_small_talk, own)) < sum(map(has_small_talk, house)) / 3


def test_stats_report_the_users_own_utility_per_version():
    stats = SimulationStats()
    stats.record_response("v1", "p", "Sure! Boil it.", GOOD, utility=0.5)
    stats.record_response("v1", "p", "Boil it.", GOOD, utility=1.0)
    stats.record_response("v2", "p", "Boil it.", GOOD, utility=1.0)
    tallies = stats.tallies()
    assert tallies["v1"].satisfaction == 1.0 and tallies["v1"].mean_utility == pytest.approx(0.75)
    assert tallies["v2"].mean_utility == 1.0
    assert no_small_talk_utility(make_population(1)[0], build_prompts()[0], "Sure! x", GOOD) == 0.5
