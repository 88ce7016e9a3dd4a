"""The simulated users: noise and disagreement behave as advertised, the
preference function is pluggable, and every feedback event they build passes
the same rules the gateway applies."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

from demo.simulation import (
    Answer,
    SimulationStats,
    all_or_nothing_utility,
    choose,
    flag_category,
    load_preference,
    make_population,
    react,
    thumb_up,
    weighted_axes_utility,
)
from demo.world import AXES, FLAWS, Verdict, build_prompts, judge, make_response
from shared.feedback_rules import feedback_problems, fill_defaults
from shared.proto.rlhf.v1 import events_pb2

GOOD = Verdict(helpful=True, polite=True, correct=True, safe=True, concise=True)
RUDE_BUT_RIGHT = dataclasses.replace(GOOD, polite=False)
POLITE_BUT_WRONG = dataclasses.replace(GOOD, correct=False)


def _prompt(kind: str = "howto"):
    return next(p for p in build_prompts() if p.kind == kind)


def test_population_is_seeded_and_varied():
    a, b = make_population(30, seed=7), make_population(30, seed=7)
    assert a == b
    assert make_population(30, seed=8) != a
    assert len({u.user_id for u in a}) == 30
    for axis in AXES:
        weights = [u.weights[axis] for u in a]
        assert min(weights) > 0 and max(weights) > 1.5 * min(weights)  # people care differently
    assert all(0.0 <= u.noise <= 0.45 for u in a)
    assert len({round(u.noise, 6) for u in a}) > 20


def test_noise_flips_comparisons_at_the_users_rate():
    user = dataclasses.replace(make_population(1, seed=0)[0], noise=0.2)
    rng = random.Random(0)
    picks = [choose(user, 0.9, 0.1, rng) for _ in range(20_000)]
    flipped = sum(p == 1 for p in picks) / len(picks)
    assert flipped == pytest.approx(0.2, abs=0.015)
    assert choose(user, 0.5, 0.5, rng) is None  # no visible difference: no preference


def test_noiseless_user_is_consistent():
    user = dataclasses.replace(make_population(1, seed=0)[0], noise=0.0)
    rng = random.Random(1)
    assert {choose(user, 0.3, 0.8, rng) for _ in range(200)} == {1}
    assert all(thumb_up(user, 1.0, rng) for _ in range(200))
    assert not any(thumb_up(user, 0.0, rng) for _ in range(200))


def test_users_disagree_on_trade_offs():
    """Rude-but-right vs polite-but-wrong: depends on each user's weights."""
    users = [dataclasses.replace(u, noise=0.0) for u in make_population(200, seed=3)]
    prompt, rng = _prompt(), random.Random(0)
    picks = [
        choose(
            u,
            weighted_axes_utility(u, prompt, "", RUDE_BUT_RIGHT),
            weighted_axes_utility(u, prompt, "", POLITE_BUT_WRONG),
            rng,
        )
        for u in users
    ]
    share_right = sum(p == 0 for p in picks) / len(picks)
    assert 0.1 < share_right < 0.9, share_right
    # ... but everyone prefers a flawless answer to either.
    assert all(
        weighted_axes_utility(u, prompt, "", GOOD) > weighted_axes_utility(u, prompt, "", RUDE_BUT_RIGHT) for u in users
    )


def test_preference_function_is_pluggable():
    users = [dataclasses.replace(u, noise=0.0) for u in make_population(50, seed=1)]
    prompt, rng = _prompt(), random.Random(0)
    answers = [Answer("gen-a", "a", RUDE_BUT_RIGHT), Answer("gen-b", "b", POLITE_BUT_WRONG)]
    # The strict taste sees no difference between two bad answers: no preferences at all.
    strict = [e for u in users for e in react(u, prompt, answers, rng, all_or_nothing_utility)]
    assert not any(e.WhichOneof("kind") == "preference" for e in strict)

    def likes_b(user, prompt, response, verdict):
        return 1.0 if response == "b" else 0.0

    custom = [e for u in users for e in react(u, prompt, answers, rng, likes_b)]
    chosen = {e.preference.chosen_generation_id for e in custom if e.WhichOneof("kind") == "preference"}
    assert chosen == {"gen-b"}


def test_load_preference_from_module_path():
    assert load_preference("demo.simulation:all_or_nothing_utility") is all_or_nothing_utility
    for bad in ("demo.simulation", "demo.simulation:nope", ":x", "demo.simulation:BASE_AXIS_WEIGHTS"):
        with pytest.raises(ValueError):
            load_preference(bad)


def test_every_feedback_event_is_valid_and_all_kinds_occur():
    users = make_population(40, seed=5)
    rng = random.Random(5)
    prompts = build_prompts()
    kinds, n = {}, 0
    for i in range(1500):
        user, prompt = rng.choice(users), rng.choice(prompts)
        n_answers = rng.choice((1, 1, 2, 2, 3, 4))
        answers = []
        for j in range(n_answers):
            flaws = [f for f in FLAWS if rng.random() < 0.3]
            text = make_response(prompt, flaws, rng).text
            answers.append(Answer(f"gen-{i}-{j}", text, judge(prompt, text)))
        for event in react(user, prompt, answers, rng):
            fill_defaults(event)
            assert feedback_problems(event) == [], event
            assert event.user_id == user.user_id and event.source == events_pb2.FEEDBACK_SOURCE_END_USER
            kinds[event.WhichOneof("kind")] = kinds.get(event.WhichOneof("kind"), 0) + 1
            n += 1
            if event.WhichOneof("kind") == "correction":
                assert judge(prompt, event.correction.response).good  # a user writes a good answer
            if event.WhichOneof("kind") == "flag":
                flagged = next(a for a in answers if a.generation_id == event.generation_id)
                assert event.flag.category == flag_category(flagged.verdict)  # never a false flag
    assert set(kinds) == {"rating", "preference", "ranking", "correction", "flag"}, kinds
    assert n > 500


def test_flag_category_follows_the_judge():
    assert flag_category(GOOD) is None
    assert flag_category(dataclasses.replace(GOOD, safe=False, polite=False)) == events_pb2.FLAG_CATEGORY_UNSAFE
    assert flag_category(RUDE_BUT_RIGHT) == events_pb2.FLAG_CATEGORY_OFFENSIVE
    assert flag_category(POLITE_BUT_WRONG) == events_pb2.FLAG_CATEGORY_WRONG
    assert flag_category(dataclasses.replace(GOOD, concise=False)) is None  # long is not flag-worthy


def test_stats_by_version_and_recent_window():
    stats = SimulationStats(recent_window=3)
    for version, verdict in [("v1", GOOD), ("v1", RUDE_BUT_RIGHT), ("v2", GOOD), ("v2", GOOD), ("v10", GOOD)]:
        stats.record_response(version, "p", "r", verdict)
    tallies = stats.tallies()
    assert tallies["v1"].responses == 2 and tallies["v1"].satisfaction == 0.5
    assert tallies["v1"].axis_rates()["polite"] == 0.5 and tallies["v2"].satisfaction == 1.0
    assert stats.recent_satisfaction() == {"v2": (2, 1.0), "v10": (1, 1.0)}  # window of 3
    stats.record_feedback(["rating", "flag"], True)
    stats.record_feedback(["preference"], False, "boom")
    assert stats.feedback_total == 2 and stats.feedback_errors == 1 and stats.last_error == "boom"


def test_series_headline_and_files(tmp_path):
    from demo.plot import LoopSeries, SeriesPoint, VersionSummary, save_series

    series = LoopSeries(kl_budget=6.0)
    series.add(SeriesPoint(5.0, "v1", 40, 0.30, mean_reward=-0.2, kl=None))
    series.add(SeriesPoint(65.0, "v2", 30, 0.55, mean_reward=0.4, kl=2.5))
    series.versions = {
        "v1": VersionSummary(40, 0.30, {a: 0.5 for a in AXES}),
        "v2": VersionSummary(30, 0.55, {a: 0.8 for a in AXES}, kl=2.5),
    }
    head = series.headline()
    assert head["baseline_version"] == "v1" and head["latest_version"] == "v2"
    assert head["gain_points"] == pytest.approx(25.0) and head["kl_under_budget"] is True
    # sqrt(0.3 * 0.7 / 40 + 0.55 * 0.45 / 30) = 0.1147...
    assert head["gain_standard_error_points"] == pytest.approx(100 * math.sqrt(0.3 * 0.7 / 40 + 0.55 * 0.45 / 30))
    png, data = save_series(series, tmp_path / "out" / "loop.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(data.read_text())
    assert len(saved["points"]) == 2 and saved["headline"]["latest_version"] == "v2"


def test_rate_spaces_calls_one_over_rate_apart_across_workers():
    import threading
    import time

    from demo.simulator import Simulator, SimulatorConfig

    rate = 2000.0
    sim = Simulator(SimulatorConfig(policy_addr="127.0.0.1:1", feedback_addr="127.0.0.1:1", rate=rate))
    try:
        threads = [threading.Thread(target=lambda: [sim._wait_for_slot() for _ in range(10)]) for _ in range(4)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        end = time.monotonic()
        # 40 calls from 4 workers booked 40 distinct slots 1/rate apart, the
        # first no earlier than start, and each worker waited for its slot.
        assert sim._next_slot >= start + 40 / rate
        assert sim._next_slot <= end + 1 / rate
        unpaced = Simulator(SimulatorConfig(policy_addr="127.0.0.1:1", feedback_addr="127.0.0.1:1"))
        unpaced._wait_for_slot()
        assert unpaced._next_slot == 0.0, "rate 0 never waits or books slots"
    finally:
        sim.stop(flush_timeout_s=0)
