"""FeedbackLedger: join, hold, dedup, pairs — on a real SQLite file."""

from __future__ import annotations

import time

import pytest

from services.trainer.data.ledger import FeedbackLedger
from services.trainer.data.training_sets import Comparison
from shared.proto.rlhf.v1 import events_pb2


def gen(gid: str, prompt: str = "User: q\nAssistant:", response: str = "r") -> events_pb2.GenerationEvent:
    return events_pb2.GenerationEvent(
        generation_id=gid, request_id="req", prompt=prompt, response=response, model_version="v1"
    )


def rating(fid: str, gid: str, score: float, user: str = "u1") -> events_pb2.FeedbackEvent:
    return events_pb2.FeedbackEvent(
        feedback_id=fid, generation_id=gid, user_id=user, rating=events_pb2.Rating(score=score)
    )


def preference(fid: str, chosen: str, rejected: str, user: str = "u1") -> events_pb2.FeedbackEvent:
    return events_pb2.FeedbackEvent(
        feedback_id=fid,
        generation_id=chosen,
        user_id=user,
        preference=events_pb2.Preference(chosen_generation_id=chosen, rejected_generation_id=rejected),
    )


@pytest.fixture()
def ledger(tmp_path):
    led = FeedbackLedger(tmp_path / "ledger.sqlite")
    yield led
    led.close()


def test_feedback_for_a_known_generation_is_recorded_once(ledger):
    ledger.record_generation(gen("g1"))
    assert ledger.record_feedback(rating("f1", "g1", 1.0)) == "recorded"
    assert ledger.record_feedback(rating("f1", "g1", 1.0)) == "duplicate"
    ledger.commit()
    assert ledger.counts()["rating"] == 1
    assert ledger.feedback_ids() == ["f1"]


def test_feedback_before_its_generation_is_held_then_joined(ledger):
    assert ledger.record_feedback(rating("f1", "g-late", -1.0)) == "held"
    assert ledger.pending_count() == 1
    released = ledger.record_generation(gen("g-late"))
    assert [f.feedback_id for f in released] == ["f1"]
    assert ledger.pending_count() == 0
    assert ledger.counts()["rating"] == 1


def test_preference_waits_for_both_generations(ledger):
    ledger.record_generation(gen("a"))
    assert ledger.record_feedback(preference("p1", "a", "b")) == "held"
    ledger.record_generation(gen("b", response="worse"))
    assert ledger.counts()["preference"] == 1


def test_held_feedback_expires_for_dead_lettering(ledger):
    ledger.record_feedback(
        rating("f1", "never", 1.0), source_topic="rlhf.feedback.v1", source_partition=2, source_offset=41
    )
    assert ledger.expire_pending(hold_s=60) == []
    expired = ledger.expire_pending(hold_s=0, now=10**12)
    assert len(expired) == 1
    assert (expired[0].source_partition, expired[0].source_offset) == (2, 41)
    assert events_pb2.FeedbackEvent.FromString(expired[0].payload).feedback_id == "f1"
    assert ledger.pending_count() == 0


def test_hold_counts_only_until_the_generations_were_last_read_to_the_end(ledger):
    ledger.record_feedback(rating("f1", "unread", 1.0))
    received = time.time()
    # Read to the end before the feedback arrived: its generation may still be unread.
    assert ledger.expire_pending(hold_s=5, now=received + 3600, caught_up_at=received - 1) == []
    expired = ledger.expire_pending(hold_s=5, now=received + 3600, caught_up_at=received + 6)
    assert [events_pb2.FeedbackEvent.FromString(e.payload).feedback_id for e in expired] == ["f1"]
    assert expired[0].held_s > 3000  # how long it really waited


def test_a_users_repeated_votes_count_once(ledger):
    ledger.record_generation(gen("g1"))
    ledger.record_feedback(rating("f1", "g1", -1.0))
    ledger.record_feedback(rating("f2", "g1", 1.0))  # changed their mind: latest wins
    ledger.record_feedback(rating("f3", "g1", 0.5, user="u2"))
    assert ledger.counts()["rating"] == 2
    ledger.record_generation(gen("g2"))
    assert ledger.record_feedback(preference("p1", "g1", "g2")) == "recorded"
    assert ledger.record_feedback(preference("p2", "g2", "g1")) == "duplicate", "same pair, same user"
    assert ledger.counts()["preference"] == 1


def test_comparisons_from_preferences_and_ratings(ledger):
    ledger.record_generation(gen("good", prompt="P", response="helpful"))
    ledger.record_generation(gen("bad", prompt="P", response="rude"))
    ledger.record_generation(gen("other", prompt="Q", response="x"))
    ledger.record_feedback(preference("p1", "good", "bad"))
    ledger.record_feedback(rating("r1", "good", 1.0))
    ledger.record_feedback(rating("r2", "bad", -1.0))
    ledger.record_feedback(rating("r3", "other", 1.0))
    pairs = ledger.comparisons()
    assert pairs.count(Comparison("P", "helpful", "rude")) == 2
    assert all(p.prompt == "P" for p in pairs), "a lone rating makes no pair"
    newest = ledger.max_seq()
    assert ledger.comparisons(after_seq=newest) == []


def test_corrections_become_demonstrations(ledger):
    ledger.record_generation(gen("g1", prompt="P"))
    ledger.record_feedback(
        events_pb2.FeedbackEvent(
            feedback_id="c1", generation_id="g1", user_id="u", correction=events_pb2.Correction(response="better")
        )
    )
    assert [(d.prompt, d.response) for d in ledger.demonstrations()] == [("P", "better")]


def test_uncommitted_writes_are_lost_on_crash_and_committed_ones_survive(tmp_path):
    path = tmp_path / "ledger.sqlite"
    led = FeedbackLedger(path)
    led.record_generation(gen("g1"))
    led.record_feedback(rating("f1", "g1", 1.0))
    led.commit()
    led.record_feedback(rating("f2", "g1", 1.0, user="u2"))
    led._db.close()  # a crash: no commit
    again = FeedbackLedger(path)
    assert again.feedback_ids() == ["f1"]
    again.close()


def test_state_and_recent_prompts(ledger):
    ledger.set_state("policy_version", "v3")
    assert ledger.get_state("policy_version") == "v3"
    for i, p in enumerate(["A", "B", "A"]):
        ledger.record_generation(gen(f"g{i}", prompt=p))
    assert set(ledger.recent_prompts()) == {"A", "B"}
