"""The FeedbackEvent rules shared by the gateway and every consumer."""

from __future__ import annotations

import math

import pytest

from shared.errors import InvalidArgument
from shared.feedback_rules import (
    INVALID_FEEDBACK_REASON,
    FeedbackLimits,
    batch_problems,
    feedback_problems,
    fill_defaults,
    raise_first,
    validating_feedback_handler,
)
from shared.kafka.consumer import InvalidEvent
from shared.kafka.events import ConsumedEvent
from shared.proto.rlhf.v1 import events_pb2 as ev

LIMITS = FeedbackLimits(max_batch_size=4, max_comment_chars=10, max_correction_chars=20)


def rating(**kw) -> ev.FeedbackEvent:
    return ev.FeedbackEvent(feedback_id="f1", generation_id="g1", rating=ev.Rating(**kw))


def first_field(event: ev.FeedbackEvent) -> str:
    fill_defaults(event)
    problems = feedback_problems(event, LIMITS)
    assert problems, "expected a problem"
    return problems[0][0]


@pytest.mark.parametrize(
    "event",
    [
        rating(score=0.5),
        rating(score=-1.0),
        rating(thumb=ev.THUMB_DOWN),
        ev.FeedbackEvent(
            feedback_id="f", preference=ev.Preference(chosen_generation_id="a", rejected_generation_id="b")
        ),
        ev.FeedbackEvent(feedback_id="f", generation_id="g", correction=ev.Correction(response="better")),
        ev.FeedbackEvent(
            feedback_id="f",
            generation_id="g",
            flag=ev.Flag(category=ev.FLAG_CATEGORY_UNSAFE),
            user_id="u",
            comment="short",
            source=ev.FEEDBACK_SOURCE_END_USER,
        ),
    ],
    ids=["score", "score-bound", "thumb", "preference", "correction", "flag"],
)
def test_every_kind_is_accepted(event):
    fill_defaults(event)
    assert feedback_problems(event, LIMITS) == []


def ranking(*groups, **kw) -> ev.FeedbackEvent:
    return ev.FeedbackEvent(
        feedback_id="f", ranking=ev.Ranking(groups=[ev.RankedGroup(generation_ids=list(g)) for g in groups]), **kw
    )


def test_a_ranking_with_ties_is_accepted_and_about_its_best_generation():
    event = ranking(["a"], ["b", "c"], ["d"])
    fill_defaults(event)
    assert event.generation_id == "a"
    assert feedback_problems(event, LIMITS) == []


@pytest.mark.parametrize(
    "event,field,words",
    [
        (ranking(["a", "b"]), "ranking.groups", "at least two groups"),
        (ranking(["a"]), "ranking.groups", "at least two"),
        (ranking(["a"], []), "ranking.groups[1].generation_ids", "is empty"),
        (ranking(["a"], [" "]), "ranking.groups[1].generation_ids[0]", "is required"),
        (ranking(["a"], ["b", "a"]), "ranking.groups[1].generation_ids[1]", "ranked twice"),
        (ranking(["a"], ["x" * 129]), "ranking.groups[1].generation_ids[0]", "the limit is 128"),
        (ranking(*[[f"g{i}"] for i in range(17)]), "ranking.groups", "the limit is 16"),
        (ranking(["a"], ["b"], generation_id="c"), "generation_id", "one of the ranked generations"),
    ],
    ids=["one-group", "one-id", "empty-group", "blank-id", "twice", "long-id", "too-many", "key"],
)
def test_a_bad_ranking_names_its_field_and_the_limit(event, field, words):
    fill_defaults(event)
    problems = feedback_problems(event, LIMITS)
    assert problems and problems[0][0] == field and words in problems[0][1], problems


def test_preference_generation_defaults_to_chosen():
    event = ev.FeedbackEvent(
        feedback_id="f", preference=ev.Preference(chosen_generation_id="a", rejected_generation_id="b")
    )
    fill_defaults(event)
    assert event.generation_id == "a"


@pytest.mark.parametrize(
    "event,field",
    [
        (ev.FeedbackEvent(feedback_id="f", generation_id="g"), "kind"),
        (ev.FeedbackEvent(feedback_id="f", rating=ev.Rating(score=0.1)), "generation_id"),
        (ev.FeedbackEvent(generation_id="g", rating=ev.Rating(score=0.1)), "feedback_id"),
        (rating(score=1.5), "rating.score"),
        (rating(score=math.nan), "rating.score"),
        (rating(), "rating.value"),
        (
            ev.FeedbackEvent(
                feedback_id="f", preference=ev.Preference(chosen_generation_id="a", rejected_generation_id="a")
            ),
            "preference.rejected_generation_id",
        ),
        (
            ev.FeedbackEvent(feedback_id="f", generation_id="g", preference=ev.Preference(rejected_generation_id="b")),
            "preference.chosen_generation_id",
        ),
        (
            ev.FeedbackEvent(feedback_id="f", preference=ev.Preference(chosen_generation_id="a")),
            "preference.rejected_generation_id",
        ),
        (
            ev.FeedbackEvent(
                feedback_id="f",
                generation_id="c",
                preference=ev.Preference(chosen_generation_id="a", rejected_generation_id="b"),
            ),
            "generation_id",
        ),
        (
            ev.FeedbackEvent(feedback_id="f", generation_id="g", correction=ev.Correction(response="x" * 21)),
            "correction.response",
        ),
        (
            ev.FeedbackEvent(feedback_id="f", generation_id="g", correction=ev.Correction(response="  ")),
            "correction.response",
        ),
        (ev.FeedbackEvent(feedback_id="f", generation_id="g", comment="x" * 11, rating=ev.Rating(score=0)), "comment"),
        (ev.FeedbackEvent(feedback_id="f", generation_id="g", flag=ev.Flag()), "flag.category"),
        (ev.FeedbackEvent(feedback_id="f", generation_id="g", flag=ev.Flag(category=99)), "flag.category"),
    ],
    ids=[
        "kind",
        "generation",
        "feedback-id",
        "score-range",
        "nan",
        "rating-empty",
        "self-preference",
        "no-chosen",
        "no-rejected",
        "generation-not-in-pair",
        "correction-long",
        "correction-empty",
        "comment-long",
        "flag-unspecified",
        "flag-unknown",
    ],
)
def test_each_rule_names_its_field(event, field):
    assert first_field(event) == field


def test_batch_names_the_item_and_limits_the_size():
    items = [rating(score=0.1) for _ in range(4)]
    items[3].rating.score = 2.0
    assert batch_problems(items, LIMITS)[0][0] == "feedback[3].rating.score"
    assert batch_problems(items + [rating(score=0)], LIMITS)[0][0] == "feedback"
    assert batch_problems([], LIMITS)[0][0] == "feedback"
    with pytest.raises(InvalidArgument) as info:
        raise_first(batch_problems(items, LIMITS))
    assert info.value.field == "feedback[3].rating.score" and "[-1, 1]" in info.value.message


def test_consumer_wrapper_refuses_invalid_events_and_passes_good_ones():
    handled = []
    handle = validating_feedback_handler(handled.append, LIMITS)
    good = ConsumedEvent(
        "t",
        0,
        1,
        b"a",
        ev.FeedbackEvent(
            feedback_id="f", preference=ev.Preference(chosen_generation_id="a", rejected_generation_id="b")
        ),
    )
    handle(good)
    assert handled == [good] and good.message.generation_id == "a"
    with pytest.raises(InvalidEvent) as info:
        handle(ConsumedEvent("t", 0, 2, b"g", rating(score=3.0)))
    assert info.value.reason == INVALID_FEEDBACK_REASON and "rating.score" in info.value.detail
    assert len(handled) == 1


def test_a_deletion_request_names_its_user_and_no_generation():
    ok = ev.FeedbackEvent(feedback_id="d", user_id="u", deletion=ev.DataDeletionRequest(reason="please"))
    fill_defaults(ok)
    assert feedback_problems(ok, LIMITS) == []
    assert first_field(ev.FeedbackEvent(feedback_id="d", deletion=ev.DataDeletionRequest())) == "user_id"
    with_generation = ev.FeedbackEvent(
        feedback_id="d", user_id="u", generation_id="g", deletion=ev.DataDeletionRequest()
    )
    assert first_field(with_generation) == "generation_id"
    assert "about a user" in feedback_problems(with_generation, LIMITS)[0][1]
    long_reason = ev.FeedbackEvent(feedback_id="d", user_id="u", deletion=ev.DataDeletionRequest(reason="x" * 11))
    assert first_field(long_reason) == "deletion.reason"
