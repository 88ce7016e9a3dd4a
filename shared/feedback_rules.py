"""The rules a FeedbackEvent must satisfy, in one place.

The feedback gateway checks them before producing; every consumer of
rlhf.feedback.v1 (the trainer) checks them again, because applications may
produce FeedbackEvents to Kafka directly. A problem is ``(field, message)``
with the field as a request path (``feedback[3].rating.score``) so a person
can find and fix it.

No grpc here: the gateway turns a problem into shared.errors.InvalidArgument,
a consumer into shared.kafka.consumer.InvalidEvent (see :func:`validating_feedback_handler`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from shared.errors import InvalidArgument
from shared.proto.rlhf.v1 import events_pb2

Problem = tuple[str, str]

# Dead-letter reason (a metric label) for an event that breaks these rules.
INVALID_FEEDBACK_REASON = "invalid_field"

_KNOWN_FLAGS = frozenset(v.number for v in events_pb2.FlagCategory.DESCRIPTOR.values) - {
    events_pb2.FLAG_CATEGORY_UNSPECIFIED
}
_KNOWN_SOURCES = frozenset(v.number for v in events_pb2.FeedbackSource.DESCRIPTOR.values)
_KNOWN_THUMBS = frozenset({events_pb2.THUMB_UP, events_pb2.THUMB_DOWN})


@dataclass(frozen=True)
class FeedbackLimits:
    """Sizes a FeedbackEvent may have. The gateway exposes them as flags; a
    consumer should use the same values as the gateway in front of it."""

    max_batch_size: int = 500
    max_comment_chars: int = 4_000
    max_correction_chars: int = 16_000
    max_id_chars: int = 128
    max_metadata_entries: int = 32
    max_metadata_chars: int = 1_024  # per key or value
    # Generations in one ranking: InstructGPT's labelers ranked 4 to 9 answers.
    max_ranking_generations: int = 16


DEFAULT_LIMITS = FeedbackLimits()


def fill_defaults(event: events_pb2.FeedbackEvent) -> None:
    """Defaults every reader agrees on: a preference is about its chosen
    generation unless it says otherwise, a ranking about its first (best) one. (Ids and timestamps are assigned by
    the gateway only, because a consumer must not invent an idempotency key.)"""
    if event.generation_id:
        return
    kind = event.WhichOneof("kind")
    if kind == "preference":
        event.generation_id = event.preference.chosen_generation_id
    elif kind == "ranking":
        first = next((group.generation_ids for group in event.ranking.groups if group.generation_ids), None)
        if first:
            event.generation_id = first[0]


def feedback_problems(
    event: events_pb2.FeedbackEvent, limits: FeedbackLimits = DEFAULT_LIMITS, prefix: str = ""
) -> list[Problem]:
    """Every rule ``event`` breaks, in field order; empty when it is valid.
    Call :func:`fill_defaults` first."""
    out: list[Problem] = []
    p = prefix

    def text_id(name: str, value: str, required: bool) -> None:
        if required and not value.strip():
            out.append((p + name, "is required"))
        elif len(value) > limits.max_id_chars:
            out.append((p + name, f"is {len(value)} characters; the limit is {limits.max_id_chars}"))

    kind = event.WhichOneof("kind")
    deletion = kind == "deletion"
    text_id("feedback_id", event.feedback_id, required=True)
    if deletion and event.generation_id:
        out.append((p + "generation_id", "must be empty in a deletion request: it is about a user, not a generation"))
    else:
        text_id("generation_id", event.generation_id, required=not deletion)
    text_id("user_id", event.user_id, required=deletion)
    if event.source not in _KNOWN_SOURCES:
        out.append((p + "source", f"unknown FeedbackSource {event.source}"))
    if len(event.comment) > limits.max_comment_chars:
        out.append((p + "comment", f"is {len(event.comment)} characters; the limit is {limits.max_comment_chars}"))
    if event.HasField("created_at"):
        out.extend(timestamp_problems(event.created_at, p + "created_at"))

    if kind is None:
        out.append((p + "kind", "set exactly one of rating, preference, ranking, correction, flag or deletion"))
    elif kind == "rating":
        out.extend(_rating_problems(event.rating, p + "rating."))
    elif kind == "preference":
        out.extend(_preference_problems(event, limits, p))
    elif kind == "ranking":
        out.extend(ranking_problems(event, limits, p))
    elif kind == "correction":
        text = event.correction.response
        if not text.strip():
            out.append((p + "correction.response", "must not be empty: write the better response"))
        elif len(text) > limits.max_correction_chars:
            out.append(
                (p + "correction.response", f"is {len(text)} characters; the limit is {limits.max_correction_chars}")
            )
    elif kind == "flag":
        if event.flag.category not in _KNOWN_FLAGS:
            names = ", ".join(v.name for v in events_pb2.FlagCategory.DESCRIPTOR.values if v.number in _KNOWN_FLAGS)
            out.append((p + "flag.category", f"unknown category {event.flag.category}; use one of {names}"))
    elif deletion and len(event.deletion.reason) > limits.max_comment_chars:
        out.append(
            (
                p + "deletion.reason",
                f"is {len(event.deletion.reason)} characters; the limit is {limits.max_comment_chars}",
            )
        )

    if len(event.metadata) > limits.max_metadata_entries:
        out.append((p + "metadata", f"has {len(event.metadata)} entries; the limit is {limits.max_metadata_entries}"))
    else:
        for key, value in event.metadata.items():
            if len(key) > limits.max_metadata_chars or len(value) > limits.max_metadata_chars:
                out.append(
                    (
                        p + f"metadata[{key[:32]!r}]",
                        f"keys and values are limited to {limits.max_metadata_chars} characters",
                    )
                )
                break
    return out


# The range google.protobuf.Timestamp allows (0001-01-01 to 9999-12-31); before 1970 is refused too.
_MAX_TIMESTAMP_SECONDS = 253_402_300_799


def timestamp_problems(ts, field: str) -> list[Problem]:
    """A created_at must be a real time: from 1970 to the year 9999, nanos in [0, 1e9)."""
    if ts.seconds < 0:
        return [(field, "must not be before 1970")]
    if ts.seconds > _MAX_TIMESTAMP_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        return [(field, f"is not a valid timestamp (seconds {ts.seconds}, nanos {ts.nanos}); send a real time")]
    return []


def _rating_problems(rating: events_pb2.Rating, p: str) -> list[Problem]:
    which = rating.WhichOneof("value")
    if which is None:
        return [(p + "value", "set score (in [-1, 1]) or thumb")]
    if which == "score":
        if math.isnan(rating.score):
            return [(p + "score", "is NaN; send a number in [-1, 1]")]
        if not -1.0 <= rating.score <= 1.0:
            return [(p + "score", f"is {rating.score}; it must be in [-1, 1]")]
    elif rating.thumb not in _KNOWN_THUMBS:
        return [(p + "thumb", "must be THUMB_UP or THUMB_DOWN")]
    return []


def _preference_problems(event: events_pb2.FeedbackEvent, limits: FeedbackLimits, p: str) -> list[Problem]:
    pref = event.preference
    out: list[Problem] = []
    for name in ("chosen_generation_id", "rejected_generation_id"):
        value = getattr(pref, name)
        if not value.strip():
            out.append((p + f"preference.{name}", "is required"))
        elif len(value) > limits.max_id_chars:
            out.append((p + f"preference.{name}", f"is {len(value)} characters; the limit is {limits.max_id_chars}"))
    if out:
        return out
    if pref.chosen_generation_id == pref.rejected_generation_id:
        out.append(
            (
                p + "preference.rejected_generation_id",
                "equals chosen_generation_id; a preference compares two different generations",
            )
        )
    elif event.generation_id not in (pref.chosen_generation_id, pref.rejected_generation_id):
        # The record key is generation_id; it must be one of the pair so the
        # trainer can join the preference to its generations.
        out.append((p + "generation_id", "must be the chosen or the rejected generation (or empty)"))
    return out


def ranking_generation_ids(ranking: events_pb2.Ranking) -> list[str]:
    """Every generation id of ``ranking``, best first (tied ones in their group's order)."""
    return [gid for group in ranking.groups for gid in group.generation_ids]


def ranking_problems(event: events_pb2.FeedbackEvent, limits: FeedbackLimits, p: str) -> list[Problem]:
    """A ranking orders at least two distinct generations in at least two groups,
    each id valid and given once, at most ``limits.max_ranking_generations``."""
    groups = event.ranking.groups
    ids = ranking_generation_ids(event.ranking)
    if len(ids) > limits.max_ranking_generations:
        return [(p + "ranking.groups", f"rank {len(ids)} generations; the limit is {limits.max_ranking_generations}")]
    out: list[Problem] = []
    seen: set[str] = set()
    for g, group in enumerate(groups):
        if not group.generation_ids:
            out.append((p + f"ranking.groups[{g}].generation_ids", "is empty; drop the group or name a generation"))
        for i, gid in enumerate(group.generation_ids):
            field = p + f"ranking.groups[{g}].generation_ids[{i}]"
            if not gid.strip():
                out.append((field, "is required"))
            elif len(gid) > limits.max_id_chars:
                out.append((field, f"is {len(gid)} characters; the limit is {limits.max_id_chars}"))
            elif gid in seen:
                out.append((field, f"{gid!r} is ranked twice; a generation has one place (tied ones share a group)"))
            seen.add(gid)
    if out:
        return out
    if len(ids) < 2 or len(groups) < 2:
        return [
            (
                p + "ranking.groups",
                f"rank {len(ids)} generation(s) in {len(groups)} group(s); a ranking orders at least two "
                "generations in at least two groups (best first; tied generations share a group)",
            )
        ]
    if event.generation_id not in seen:
        # The record key is generation_id; it must be ranked so the trainer joins it.
        out.append((p + "generation_id", "must be one of the ranked generations (or empty)"))
    return out


def batch_problems(
    events: Sequence[events_pb2.FeedbackEvent], limits: FeedbackLimits = DEFAULT_LIMITS, field: str = "feedback"
) -> list[Problem]:
    """Problems of a batch: its size, then each item's as ``feedback[i].…``."""
    if not events:
        return [(field, "is empty; send at least one feedback event")]
    if len(events) > limits.max_batch_size:
        return [(field, f"has {len(events)} items; the limit is {limits.max_batch_size} per call")]
    out: list[Problem] = []
    for i, event in enumerate(events):
        out.extend(feedback_problems(event, limits, prefix=f"{field}[{i}]."))
    return out


def raise_first(problems: Iterable[Problem]) -> None:
    """Raise InvalidArgument for the first problem, if any."""
    for field, message in problems:
        raise InvalidArgument(field, message)


def validating_feedback_handler(handler: Callable, limits: FeedbackLimits = DEFAULT_LIMITS) -> Callable:
    """Wrap an EventConsumerLoop handler for rlhf.feedback.v1: defaults are
    filled, and an event that breaks the rules raises InvalidEvent (so the
    loop dead-letters it with every problem) instead of reaching ``handler``."""
    from shared.kafka.consumer import InvalidEvent  # imports the Kafka client; keep this module light

    def handle(event) -> None:
        message = event.message
        if not isinstance(message, events_pb2.FeedbackEvent):
            raise InvalidEvent("wrong_message_type", f"expected FeedbackEvent, got {type(message).__name__}")
        fill_defaults(message)
        problems = feedback_problems(message, limits)
        if problems:
            raise InvalidEvent(INVALID_FEEDBACK_REASON, "; ".join(f"{f}: {m}" for f, m in problems))
        handler(event)

    return handle
