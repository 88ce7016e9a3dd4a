"""POST /v1/feedback: a small JSON body → the FeedbackEvent the feedback gateway takes.

Body (one kind of feedback per request)::

    {"id": "<generation id>",            # or "generation_id"; a completion's id
     "user": "u-42",                      # optional: the end user
     "feedback_id": "...",                # optional idempotency key (resend = no-op)
     "comment": "...", "metadata": {"k": "v"}, "source": "end_user|annotator|automated",
     and exactly one of
     "rating": 0.5                        # a score in [-1, 1]
     "thumb": "up" | "down"
     "preference": {"chosen": "<generation id>", "rejected": "<generation id>"}  # "id" may be left out
     "ranking": ["<best id>", ["<tied id>", "<tied id>"], "<worst id>"]  # best first; a list = tied; "id" optional
     "correction": "a better answer"      # becomes an SFT demonstration
     "flag": "unsafe" | "offensive" | "wrong" | "other"}

The answer: ``{"id": feedback_id, "object": "feedback", "created", "generation_id",
"kind", "duplicate"}``. The gateway checks the values (score range, lengths);
its field names come back as this body's params. No grpc here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from services.openai_api import fields as f
from services.openai_api.api_errors import ParamMap, invalid
from shared.feedback_rules import fill_defaults
from shared.proto.rlhf.v1 import events_pb2, feedback_pb2

E = TypeVar("E")
KINDS = ("rating", "thumb", "preference", "ranking", "correction", "flag")
FEEDBACK_FIELDS = ("id", "generation_id", "user", "feedback_id", "comment", "metadata", "source", *KINDS)
THUMBS = {"up": events_pb2.THUMB_UP, "down": events_pb2.THUMB_DOWN}
FLAGS = {
    "unsafe": events_pb2.FLAG_CATEGORY_UNSAFE,
    "offensive": events_pb2.FLAG_CATEGORY_OFFENSIVE,
    "wrong": events_pb2.FLAG_CATEGORY_WRONG,
    "other": events_pb2.FLAG_CATEGORY_OTHER,
}
SOURCES = {
    "end_user": events_pb2.FEEDBACK_SOURCE_END_USER,
    "annotator": events_pb2.FEEDBACK_SOURCE_ANNOTATOR,
    "automated": events_pb2.FEEDBACK_SOURCE_AUTOMATED,
}
# The gateway's field names (shared.feedback_rules) → this body's params.
FEEDBACK_PARAMS: ParamMap = (
    ("feedback.feedback_id", "feedback_id"),
    ("feedback.generation_id", "id"),
    ("feedback.user_id", "user"),
    ("feedback.source", "source"),
    ("feedback.comment", "comment"),
    ("feedback.rating.score", "rating"),
    ("feedback.rating.thumb", "thumb"),
    ("feedback.rating.value", "rating"),
    ("feedback.preference.chosen_generation_id", "preference.chosen"),
    ("feedback.preference.rejected_generation_id", "preference.rejected"),
    ("feedback.ranking", "ranking"),
    ("feedback.correction.response", "correction"),
    ("feedback.flag.category", "flag"),
    ("feedback.metadata", "metadata"),
    ("feedback.kind", None),
    ("feedback", None),
)


def parse_feedback(body: f.Body) -> feedback_pb2.SubmitFeedbackRequest:
    """The body → SubmitFeedbackRequest; raises ApiError (400) naming the param at fault."""
    f.reject_unknown(body, FEEDBACK_FIELDS)
    event = events_pb2.FeedbackEvent(
        generation_id=_generation_id(body),
        user_id=f.get_str(body, "user") or "",
        feedback_id=f.get_str(body, "feedback_id") or "",
        comment=f.get_str(body, "comment") or "",
        source=_choice(body, "source", SOURCES) or events_pb2.FEEDBACK_SOURCE_END_USER,
        metadata=f.get_str_map(body, "metadata", max_entries=32, max_key_chars=1024, max_value_chars=1024),
    )
    given = [k for k in KINDS if body.get(k) is not None]
    if len(given) != 1:
        what = f"got {', '.join(given)}" if given else "got none"
        raise invalid(given[1] if len(given) > 1 else None, f"send exactly one of {', '.join(KINDS)} ({what})")
    _set_kind(event, body, given[0])
    return feedback_pb2.SubmitFeedbackRequest(feedback=event)


def _generation_id(body: f.Body) -> str:
    by_id, by_name = f.get_str(body, "id"), f.get_str(body, "generation_id")
    if by_id is not None and by_name is not None and by_id != by_name:
        raise invalid("generation_id", "differs from id; send one of them (a completion's id)")
    return by_id or by_name or ""


def _choice(body: f.Body, name: str, allowed: Mapping[str, E]) -> E | None:
    value = f.get_str(body, name)
    if value is None:
        return None
    if value not in allowed:
        raise invalid(name, f"is {value!r}; expected one of {', '.join(allowed)}")
    return allowed[value]


def _set_kind(event: events_pb2.FeedbackEvent, body: f.Body, kind: str) -> None:
    if kind == "rating":
        event.rating.score = f.get_number(body, "rating", low=-1.0, high=1.0) or 0.0
    elif kind == "thumb":
        event.rating.thumb = _choice(body, "thumb", THUMBS) or events_pb2.THUMB_UNSPECIFIED
    elif kind == "preference":
        pair = f.get_object(body, "preference") or {}
        f.reject_unknown(pair, ("chosen", "rejected"), prefix="preference.")
        event.preference.chosen_generation_id = _pair_id(pair, "chosen")
        event.preference.rejected_generation_id = _pair_id(pair, "rejected")
    elif kind == "ranking":
        _set_ranking(event, body.get("ranking"))
    elif kind == "correction":
        event.correction.response = f.get_str(body, "correction") or ""
    else:
        event.flag.category = _choice(body, "flag", FLAGS) or events_pb2.FLAG_CATEGORY_UNSPECIFIED


def _pair_id(pair: f.Body, name: str) -> str:
    value = pair.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"preference.{name}", "must be a generation id (the id of one of the two completions)")
    return value


def _set_ranking(event: events_pb2.FeedbackEvent, value: Any) -> None:
    """``["a", ["b", "c"], "d"]`` (best first, a nested list = tied) → Ranking groups.
    Only the shape is checked here; the gateway checks ids, counts and repeats."""
    shape = 'must be a list, best first, of generation ids or lists of tied ids, e.g. ["a", ["b", "c"], "d"]'
    if not isinstance(value, list):
        raise invalid("ranking", shape, code="invalid_type")
    for i, item in enumerate(value):
        ids = item if isinstance(item, list) else [item]
        if not all(isinstance(gid, str) for gid in ids):
            raise invalid(f"ranking[{i}]", shape, code="invalid_type")
        event.ranking.groups.add(generation_ids=ids)


def _default_generation_id(event: events_pb2.FeedbackEvent) -> str:
    """The generation the gateway filled in (shared.feedback_rules.fill_defaults) for a body without "id"."""
    filled = events_pb2.FeedbackEvent()
    filled.CopyFrom(event)
    fill_defaults(filled)
    return filled.generation_id


def receipt_body(request: feedback_pb2.SubmitFeedbackRequest, reply: feedback_pb2.SubmitFeedbackResponse) -> dict:
    """The answer to POST /v1/feedback."""
    event = request.feedback
    kind: Any = event.WhichOneof("kind")
    if kind == "rating" and event.rating.WhichOneof("value") == "thumb":
        kind = "thumb"
    return {
        "id": reply.feedback_id,
        "object": "feedback",
        "created": reply.accepted_at.seconds,
        "generation_id": event.generation_id or _default_generation_id(event),
        "kind": kind,
        "duplicate": reply.duplicate,
    }
