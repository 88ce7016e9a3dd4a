"""The ledger's training sets: deletion requests exclude a user, per-user caps bound a flood."""

from __future__ import annotations

import sqlite3

import pytest

from services.trainer.data.fair_share import NO_CAPS, UserCaps
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.data.ledger_lineage import read_user_rows
from shared.proto.rlhf.v1 import events_pb2
from tests.unit.test_ledger import gen, preference, rating


def correction(fid: str, gid: str, user: str, text: str = "better") -> events_pb2.FeedbackEvent:
    return events_pb2.FeedbackEvent(
        feedback_id=fid, generation_id=gid, user_id=user, correction=events_pb2.Correction(response=text)
    )


def deletion(fid: str, user: str, reason: str = "") -> events_pb2.FeedbackEvent:
    return events_pb2.FeedbackEvent(
        feedback_id=fid, user_id=user, deletion=events_pb2.DataDeletionRequest(reason=reason)
    )


@pytest.fixture()
def ledger(tmp_path):
    led = FeedbackLedger(tmp_path / "ledger.sqlite", caps=NO_CAPS)
    yield led
    led.close()


def pair_for(ledger: FeedbackLedger, n: int, user: str, prompt: str = "P") -> None:
    """Two generations of ``prompt`` and ``user``'s preference for the first."""
    ledger.record_generation(gen(f"{user}-{n}-a", prompt=prompt, response=f"good {n}"))
    ledger.record_generation(gen(f"{user}-{n}-b", prompt=prompt, response=f"bad {n}"))
    assert ledger.record_feedback(preference(f"{user}-p{n}", f"{user}-{n}-a", f"{user}-{n}-b", user=user)) == (
        "recorded"
    )


def test_a_deletion_request_excludes_the_users_rows_now_and_later(ledger):
    for gid, response in (("mine", "a"), ("mine2", "b")):  # generated for alice
        ledger.record_generation(
            events_pb2.GenerationEvent(generation_id=gid, prompt="my question", response=response, user_id="alice")
        )
    ledger.record_generation(gen("x", prompt="Q", response="x1"))
    ledger.record_generation(gen("y", prompt="Q", response="y1"))
    ledger.record_feedback(preference("a1", "x", "y", user="alice"))
    ledger.record_feedback(correction("a2", "x", "alice"))
    ledger.record_feedback(preference("b1", "mine", "mine2", user="bob"))  # bob judged alice's generation
    ledger.record_feedback(preference("b2", "y", "x", user="bob"))
    assert len(ledger.comparisons()) == 3 and len(ledger.demonstrations()) == 1
    assert "my question" in ledger.distinct_prompts()

    assert ledger.record_feedback(deletion("d1", "alice", "GDPR art. 17")) == "recorded"
    assert ledger.record_feedback(deletion("d1", "alice")) == "duplicate"
    ledger.record_feedback(rating("a3", "y", 1.0, user="alice"))  # arrives after the request: excluded too
    ledger.commit()

    assert [(c.chosen, c.rejected) for c in ledger.comparisons()] == [("y1", "x1")], "only bob's vote on others"
    assert ledger.demonstrations() == []
    assert "my question" not in ledger.distinct_prompts() and "my question" not in ledger.recent_prompts()
    assert ledger.excluded_users() == 1 and ledger.counts()["deletion"] == 1
    rows, requests = read_user_rows(ledger.path, "alice")
    assert [kind for _, kind, _ in rows] == ["preference", "correction", "rating"], "kept for lineage"
    assert [(r[0], r[2]) for r in requests] == [("d1", "GDPR art. 17")]


def test_only_the_first_rows_of_a_user_per_window_count(ledger):
    for n in range(5):
        pair_for(ledger, n, "flood")
    for n in range(3):
        pair_for(ledger, n, "", prompt="anonymous")
    ledger.commit()
    ledger.caps = UserCaps(max_share=1.0, window_s=3600, max_per_window=2)
    kept = [c for c in ledger.comparisons() if c.users == ("flood",)]
    assert [c.chosen for c in kept] == ["good 0", "good 1"], "the first two of the window"
    assert len([c for c in ledger.comparisons() if c.users == ("",)]) == 3, "anonymous feedback has no one to limit"
    # Rows received in another window count again.
    ledger._db.execute("UPDATE feedback SET received_at = received_at + 3600 WHERE feedback_id = 'flood-p4'")
    assert [c.chosen for c in ledger.comparisons() if c.users == ("flood",)] == ["good 0", "good 1", "good 4"]


def test_comparisons_are_weighted_so_no_user_exceeds_the_share(ledger):
    for user in range(10):
        for n in range(4):
            pair_for(ledger, n, f"u{user}", prompt=f"P{user}")
    for n in range(30):
        pair_for(ledger, n, "attacker", prompt="A")
    ledger.commit()
    assert all(c.weight == 1.0 for c in ledger.comparisons()), "no caps: every pair counts fully"
    ledger.caps = UserCaps(max_share=0.1)
    pairs = ledger.comparisons()
    attacker = sum(c.weight for c in pairs if c.users == ("attacker",))
    assert attacker / sum(c.weight for c in pairs) == pytest.approx(0.1)
    assert {c.weight for c in pairs if c.users != ("attacker",)} == {1.0}


def test_rating_pairs_belong_to_their_raters(ledger):
    ledger.caps = UserCaps(max_share=0.1)
    for user in range(10):  # honest users' ratings: one pair each
        ledger.record_generation(gen(f"h{user}a", prompt=f"H{user}", response="fine"))
        ledger.record_generation(gen(f"h{user}b", prompt=f"H{user}", response="poor"))
        ledger.record_feedback(rating(f"h{user}-1", f"h{user}a", 1.0, user=f"u{user}"))
        ledger.record_feedback(rating(f"h{user}-2", f"h{user}b", -1.0, user=f"u{user}"))
    for n in range(8):  # a mass rater: 8 generations of one prompt, 28 pairs
        ledger.record_generation(gen(f"m{n}", prompt="M", response=f"r{n}"))
        ledger.record_feedback(rating(f"m-{n}", f"m{n}", n / 8, user="rater"))
    pairs = ledger.comparisons()
    mass = [c for c in pairs if c.users == ("rater",)]
    assert len(mass) == 28
    assert sum(c.weight for c in mass) / sum(c.weight for c in pairs) == pytest.approx(0.1)


def test_demonstrations_are_capped_per_user(ledger):
    ledger.caps = UserCaps(max_share=0.1)
    ledger.record_generation(gen("g", prompt="P"))
    for user in range(10):
        ledger.record_feedback(correction(f"c{user}", "g", f"u{user}", text=f"from u{user}"))
    for n in range(40):
        ledger.record_feedback(correction(f"flood{n}", "g", "flooder", text=f"flood {n}"))
    demos = ledger.demonstrations(limit=100)
    flooded = [d.response for d in demos if d.user_id == "flooder"]
    assert len(flooded) == 1 and flooded == ["flood 39"], "the flooder keeps their share, most recent first"
    assert len(demos) == 11


def test_an_older_ledger_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE feedback (feedback_id TEXT PRIMARY KEY, generation_id TEXT NOT NULL, user_id TEXT NOT NULL, "
        "kind TEXT NOT NULL, vote_key TEXT NOT NULL UNIQUE, score REAL, other_generation_id TEXT, text TEXT, "
        "flag TEXT, source TEXT NOT NULL, created_at REAL NOT NULL, seq INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO feedback VALUES ('f0', 'g', 'u', 'rating', 'k', 1.0, NULL, NULL, NULL, 'X', 123.0, 1)")
    db.commit()
    db.close()
    ledger = FeedbackLedger(path)
    try:
        assert ledger._db.execute("SELECT received_at FROM feedback").fetchone()[0] == 123.0
        ledger.record_generation(gen("g2"))
        assert ledger.record_feedback(rating("f1", "g2", 1.0)) == "recorded"
        assert ledger.counts()["rating"] == 2
    finally:
        ledger.close()
