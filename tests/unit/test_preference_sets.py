"""Online DPO's live pairs and KTO's thumbs, read from a real ledger: newest first,
held-out prompts left out, deleted users excluded, per-user caps applied."""

from __future__ import annotations

import pytest

from services.trainer.data.fair_share import NO_CAPS, UserCaps
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.loop.heldout import HeldoutSplit
from shared.proto.rlhf.v1 import events_pb2
from tests.unit.test_ledger import preference, rating
from tests.unit.test_ledger_caps import deletion
from tests.unit.test_ledger_rankings import ranking

SPLIT = HeldoutSplit(one_in=3)


def prompt_where(heldout: bool, n: int = 0) -> str:
    """The n-th prompt "User: question k" that is (or is not) in SPLIT's held-out slice."""
    found = [p for p in (f"User: question {k}\nAssistant:" for k in range(200)) if SPLIT.is_heldout(p) == heldout]
    return found[n]


def gen(gid: str, prompt: str, response: str, user: str = "", request: str = "req") -> events_pb2.GenerationEvent:
    return events_pb2.GenerationEvent(
        generation_id=gid, request_id=request, prompt=prompt, response=response, model_version="v1", user_id=user
    )


def flag(fid: str, gid: str, user: str, category=events_pb2.FLAG_CATEGORY_WRONG) -> events_pb2.FeedbackEvent:
    return events_pb2.FeedbackEvent(
        feedback_id=fid, generation_id=gid, user_id=user, flag=events_pb2.Flag(category=category)
    )


@pytest.fixture()
def ledger(tmp_path):
    led = FeedbackLedger(tmp_path / "ledger.sqlite", caps=NO_CAPS)
    yield led
    led.close()


def served_pair(ledger: FeedbackLedger, key: str, prompt: str, user: str = "u1", gen_user: str = "") -> None:
    """Two answers served by one request (num_return_sequences=2); ``user`` prefers the first."""
    ledger.record_generation(gen(f"{key}-a", prompt, f"good {key}", gen_user, request=key))
    ledger.record_generation(gen(f"{key}-b", prompt, f"bad {key}", gen_user, request=key))
    assert ledger.record_feedback(preference(f"pref-{key}", f"{key}-a", f"{key}-b", user=user)) == "recorded"


def test_live_pairs_are_the_newest_trainable_comparisons_with_the_served_prompt(ledger):
    train, held = prompt_where(False), prompt_where(True)
    for k in range(4):
        served_pair(ledger, f"p{k}", train)
    served_pair(ledger, "held", held)
    # A preference between answers to two different prompts is no DPO pair.
    ledger.record_generation(gen("x", train, "x answer"))
    ledger.record_generation(gen("y", prompt_where(False, 1), "y answer"))
    ledger.record_feedback(preference("pref-xy", "x", "y"))
    ledger.commit()

    pairs = ledger.live_pairs(limit=3, is_heldout=SPLIT.is_heldout)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("good p3", "bad p3"),
        ("good p2", "bad p2"),
        ("good p1", "bad p1"),
    ]
    assert all(p.prompt == train and p.weight == 1.0 and p.same_request for p in pairs)
    everything = ledger.live_pairs(limit=100, is_heldout=SPLIT.is_heldout)
    assert len(everything) == 4 and held not in {p.prompt for p in everything}
    assert len(ledger.live_pairs(limit=100, is_heldout=lambda p: False)) == 5  # the held-out one exists


def test_live_pairs_leave_out_deleted_users_and_apply_the_per_user_caps(ledger):
    prompt = prompt_where(False)
    for k in range(6):
        served_pair(ledger, f"heavy{k}", prompt, user="heavy")
    for user in ("a", "b", "c", "d"):
        served_pair(ledger, user, prompt, user=user)
    served_pair(ledger, "for-gone", prompt, user="a", gen_user="gone")  # generated for a user who then left
    served_pair(ledger, "by-gone", prompt, user="gone")
    ledger.record_feedback(deletion("del", "gone"))
    ledger.commit()

    pairs = ledger.live_pairs(limit=100, is_heldout=SPLIT.is_heldout)
    assert {p.user_id for p in pairs} == {"heavy", "a", "b", "c", "d"} and len(pairs) == 10
    ledger.caps = UserCaps(max_share=0.25, max_per_window=0)
    capped = ledger.live_pairs(limit=100, is_heldout=SPLIT.is_heldout)
    heavy = sum(p.weight for p in capped if p.user_id == "heavy")
    total = sum(p.weight for p in capped)
    assert heavy == pytest.approx(0.25 * total), "water filling: the heavy user weighs exactly max_share"
    assert all(p.weight == 1.0 for p in capped if p.user_id != "heavy")
    ledger.caps = UserCaps(max_share=1.0, max_per_window=2)
    assert len([p for p in ledger.live_pairs(100, SPLIT.is_heldout) if p.user_id == "heavy"]) == 2


def test_a_ranking_gives_its_ordered_pairs_weighing_2_over_k_each_newest_first(ledger):
    prompt = prompt_where(False)
    served_pair(ledger, "old", prompt)
    for gid, response in (("a", "best"), ("b", "tied 1"), ("c", "tied 2"), ("d", "worst")):
        ledger.record_generation(gen(gid, prompt, response, request="rank"))
    assert ledger.record_feedback(ranking("rk", ["a"], ["b", "c"], ["d"])) == "recorded"  # b and c tie
    ledger.commit()

    pairs = ledger.live_pairs(limit=100, is_heldout=SPLIT.is_heldout)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("best", "tied 1"),
        ("best", "tied 2"),
        ("best", "worst"),
        ("tied 1", "worst"),
        ("tied 2", "worst"),
        ("good old", "bad old"),
    ], "the ranking is newer than the preference; ties make no pair"
    assert [p.weight for p in pairs] == pytest.approx([0.5] * 5 + [1.0])  # 2/K, K = 4: the ranking weighs 2.5
    assert len(ledger.live_pairs(limit=2, is_heldout=SPLIT.is_heldout)) == 2
    assert ledger.live_pairs(limit=100, is_heldout=lambda p: True) == []


def test_thumbs_up_are_desirable_thumbs_down_and_flags_undesirable_zero_skipped(ledger):
    prompt, held = prompt_where(False), prompt_where(True)
    for gid, response in (("g1", "great"), ("g2", "meh"), ("g3", "awful"), ("g4", "wrong"), ("gh", "held")):
        ledger.record_generation(gen(gid, held if gid == "gh" else prompt, response))
    ledger.record_feedback(rating("r1", "g1", 1.0, user="u1"))
    ledger.record_feedback(rating("r2", "g2", 0.0, user="u1"))  # neither: skipped
    ledger.record_feedback(rating("r3", "g3", -0.5, user="u2"))
    ledger.record_feedback(flag("f1", "g4", "u2"))
    ledger.record_feedback(flag("f2", "g4", "u2", events_pb2.FLAG_CATEGORY_OFFENSIVE))  # same user, same answer
    ledger.record_feedback(rating("rh", "gh", 1.0, user="u1"))  # a held-out prompt
    ledger.commit()

    rated = ledger.rated_responses(limit=100, is_heldout=SPLIT.is_heldout)
    assert [(r.response, r.desirable, r.kind) for r in rated] == [
        ("wrong", False, "flag"),
        ("awful", False, "rating"),
        ("great", True, "rating"),
    ]
    no_flags = ledger.rated_responses(limit=100, is_heldout=SPLIT.is_heldout, flags=False)
    assert [r.response for r in no_flags] == ["awful", "great"]
    assert [r.response for r in ledger.rated_responses(limit=1, is_heldout=SPLIT.is_heldout)] == ["wrong"]
    # A user's later rating of the same answer replaces the earlier one.
    ledger.record_feedback(rating("r1b", "g1", -1.0, user="u1"))
    ledger.commit()
    assert ("great", False) in [(r.response, r.desirable) for r in ledger.rated_responses(100, SPLIT.is_heldout)]


def test_thumbs_leave_out_deleted_users_and_apply_the_caps(ledger):
    prompt = prompt_where(False)
    for k in range(8):
        ledger.record_generation(gen(f"g{k}", prompt, f"answer {k}"))
        ledger.record_feedback(rating(f"heavy{k}", f"g{k}", 1.0, user="heavy"))
    for k, user in enumerate(("a", "b", "c", "gone")):
        ledger.record_feedback(rating(f"{user}-r", f"g{k}", -1.0, user=user))
    ledger.record_generation(gen("mine", prompt, "for gone", user="gone"))
    ledger.record_feedback(rating("a-mine", "mine", 1.0, user="a"))
    ledger.record_feedback(deletion("del", "gone"))
    ledger.commit()

    rated = ledger.rated_responses(100, SPLIT.is_heldout)
    assert "gone" not in {r.user_id for r in rated} and "for gone" not in {r.response for r in rated}
    assert len(rated) == 11
    ledger.caps = UserCaps(max_share=0.4, max_per_window=0)
    capped = ledger.rated_responses(100, SPLIT.is_heldout)
    total = sum(r.weight for r in capped)
    assert sum(r.weight for r in capped if r.user_id == "heavy") == pytest.approx(0.4 * total)
