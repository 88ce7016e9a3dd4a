"""Rankings in the trainer's ledger: held until joined, one prompt, expanded into
weighted pairs for the reward model (on a real SQLite file)."""

from __future__ import annotations

import pytest

from services.trainer.data.fair_share import UserCaps
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.data.ledger_joins import MIXED_PROMPTS, FeedbackRejected
from services.trainer.loop.heldout import HeldoutSplit
from shared.proto.rlhf.v1 import events_pb2 as ev


def gen(gid: str, prompt: str = "P", user: str = "") -> ev.GenerationEvent:
    return ev.GenerationEvent(
        generation_id=gid, request_id="req", prompt=prompt, response=f"answer {gid}", model_version="v1", user_id=user
    )


def ranking(fid: str, *groups: list[str], user: str = "u1") -> ev.FeedbackEvent:
    return ev.FeedbackEvent(
        feedback_id=fid,
        generation_id=groups[0][0],
        user_id=user,
        ranking=ev.Ranking(groups=[ev.RankedGroup(generation_ids=g) for g in groups]),
    )


def preference(fid: str, chosen: str, rejected: str, user: str) -> ev.FeedbackEvent:
    return ev.FeedbackEvent(
        feedback_id=fid,
        generation_id=chosen,
        user_id=user,
        preference=ev.Preference(chosen_generation_id=chosen, rejected_generation_id=rejected),
    )


@pytest.fixture()
def ledger(tmp_path):
    led = FeedbackLedger(tmp_path / "ledger.sqlite", caps=UserCaps(max_share=1.0, max_per_window=0))
    yield led
    led.close()


def pairs_of(comparisons) -> dict[tuple[str, str], float]:
    return {(c.chosen.removeprefix("answer "), c.rejected.removeprefix("answer ")): c.weight for c in comparisons}


def test_a_full_ranking_expands_into_every_pair_weighing_k_minus_1_choices(ledger):
    for gid in "abcd":
        ledger.record_generation(gen(gid))
    assert ledger.record_feedback(ranking("r1", ["a"], ["b"], ["c"], ["d"])) == "recorded"
    pairs = pairs_of(ledger.comparisons())
    assert set(pairs) == {("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")}
    assert all(w == pytest.approx(2 / 4) for w in pairs.values())
    assert sum(pairs.values()) == pytest.approx(4 - 1)
    assert ledger.counts()["ranking"] == 1


def test_tied_generations_make_no_pair(ledger):
    for gid in "abcd":
        ledger.record_generation(gen(gid))
    ledger.record_feedback(ranking("r1", ["a"], ["b", "c"], ["d"]))
    pairs = pairs_of(ledger.comparisons())
    assert set(pairs) == {("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")}
    assert ("b", "c") not in pairs and ("c", "b") not in pairs
    assert all(w == pytest.approx(2 / 4) for w in pairs.values())


def test_a_ranking_is_held_until_every_generation_arrives_in_any_order(ledger):
    ledger.record_generation(gen("b"))
    assert ledger.record_feedback(ranking("r1", ["a"], ["b"], ["c"])) == "held"
    assert ledger.record_generation(gen("a")) == []  # c still missing: held on, now waiting for c
    assert ledger.pending_count() == 1
    released = ledger.record_generation(gen("c"))
    assert [f.feedback_id for f in released] == ["r1"] and ledger.pending_count() == 0
    assert set(pairs_of(ledger.comparisons())) == {("a", "b"), ("a", "c"), ("b", "c")}


def test_a_ranking_across_prompts_is_refused_with_nothing_written(ledger):
    ledger.record_generation(gen("a", prompt="P"))
    ledger.record_generation(gen("b", prompt="Q"))
    with pytest.raises(FeedbackRejected) as info:
        ledger.record_feedback(ranking("r1", ["a"], ["b"]))
    assert info.value.reason == MIXED_PROMPTS and "2 different prompts" in info.value.detail
    assert ledger.counts()["ranking"] == 0 and ledger.comparisons() == []


def test_a_held_ranking_across_prompts_is_handed_back_when_its_last_generation_arrives(ledger):
    ledger.record_generation(gen("a", prompt="P"))
    assert ledger.record_feedback(ranking("r1", ["a"], ["b"]), source_topic="t", source_offset=7) == "held"
    assert ledger.record_generation(gen("b", prompt="Q")) == []
    [rejected] = ledger.take_rejected()
    assert (rejected.reason, rejected.source_topic, rejected.source_offset) == (MIXED_PROMPTS, "t", 7)
    assert ev.FeedbackEvent.FromString(rejected.payload).feedback_id == "r1"
    assert ledger.take_rejected() == [] and ledger.pending_count() == 0 and ledger.comparisons() == []


def test_a_repeated_ranking_of_the_same_answers_counts_once(ledger):
    for gid in "abc":
        ledger.record_generation(gen(gid))
    assert ledger.record_feedback(ranking("r1", ["a"], ["b"], ["c"])) == "recorded"
    assert ledger.record_feedback(ranking("r2", ["c"], ["b"], ["a"])) == "duplicate"
    assert len(ledger.comparisons()) == 3


def test_deleted_users_and_their_generations_are_left_out(ledger):
    for gid in "abc":
        ledger.record_generation(gen(gid, user="asker" if gid != "c" else "leaver"))
    ledger.record_generation(gen("x", prompt="Q"))
    ledger.record_generation(gen("y", prompt="Q"))
    ledger.record_feedback(ranking("r1", ["a"], ["b"], ["c"], user="ranker"))
    ledger.record_feedback(ranking("r2", ["x"], ["y"], user="leaver"))
    ledger.record_feedback(ev.FeedbackEvent(feedback_id="d1", user_id="leaver", deletion=ev.DataDeletionRequest()))
    # c was generated for the leaver: its pairs go; the leaver's own ranking goes entirely.
    assert pairs_of(ledger.comparisons()) == {("a", "b"): pytest.approx(2 / 3)}


def test_ranking_pairs_stay_on_one_side_of_the_heldout_split(ledger):
    split = HeldoutSplit(one_in=2)
    prompts = [f"prompt {i}" for i in range(20)]
    for n, prompt in enumerate(prompts):
        for gid in "abc":
            ledger.record_generation(gen(f"{n}{gid}", prompt=prompt))
        ledger.record_feedback(ranking(f"r{n}", [f"{n}a"], [f"{n}b"], [f"{n}c"]))
    train, held = split.split_pairs(ledger.comparisons(), lambda c: c.prompt)
    assert train and held
    assert not {c.prompt for c in train} & {c.prompt for c in held}
    assert len(train) % 3 == 0 and len(held) % 3 == 0


def test_ranking_weights_compose_with_the_share_cap(tmp_path):
    led = FeedbackLedger(tmp_path / "l.sqlite", caps=UserCaps(max_share=0.4, max_per_window=0))
    try:
        for gid in "abcd":
            led.record_generation(gen(gid))
        led.record_feedback(ranking("r1", ["a"], ["b"], ["c"], ["d"], user="ranker"))  # weighs 3
        for n, user in enumerate(("p1", "p2", "p3")):  # each weighs 1
            led.record_generation(gen(f"{user}-x", prompt=f"Q{n}"))
            led.record_generation(gen(f"{user}-y", prompt=f"Q{n}"))
            led.record_feedback(preference(f"f{n}", f"{user}-x", f"{user}-y", user))
        comparisons = led.comparisons()
        by_user: dict[str, float] = {}
        for c in comparisons:
            by_user[c.users[0]] = by_user.get(c.users[0], 0.0) + c.weight
        total = sum(by_user.values())
        # Uncapped the ranker would hold 3/6; the cap brings every share to at most 0.4.
        assert by_user["ranker"] / total == pytest.approx(0.4)
        assert all(c.weight == pytest.approx(by_user["ranker"] / 6) for c in comparisons if c.users == ("ranker",))
    finally:
        led.close()
