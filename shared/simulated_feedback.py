"""What any application's simulated users send, apart from how they judge.

Every app's users (demo/simulation.py, assistant/feedback.py) decide with
their own taste and their own world's judge; what they share, here:

- :class:`FeedbackMix` and :func:`parse_feedback_mix`: one multiplier per
  feedback kind (``--feedback-mix corrections=0,rankings=2``, the same flag for
  every app) on each user's own rate of that kind.
- :func:`answers_to_show`: how many answers the app asks for (3 or 4 to rank,
  2 to compare, else 1).
- :func:`feedback_event`: the FeedbackEvent an end user sends, with a fresh id.
- :func:`feedback_kind`: the kind an event carries, for the counters.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields

from google.protobuf.timestamp_pb2 import Timestamp

from shared.proto.rlhf.v1 import events_pb2

MIX_KINDS = ("comparisons", "rankings", "ratings", "flags", "corrections")
# Of the requests where the app shows several answers (a user's compare_rate),
# this share asks for a ranking of 3 or 4 instead of a pair, at rankings=1.
RANKING_SHARE = 0.25


@dataclass(frozen=True)
class FeedbackMix:
    """Multipliers (>= 0) on each user's rate of each feedback kind; 1 = as the
    population draws it, 0 = never. Probabilities are clipped to [0, 1]."""

    comparisons: float = 1.0
    rankings: float = 1.0
    ratings: float = 1.0
    flags: float = 1.0
    corrections: float = 1.0

    def describe(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))


def parse_feedback_mix(spec: str) -> FeedbackMix:
    """``"corrections=0,rankings=2"`` → FeedbackMix (unnamed kinds stay 1).
    Raises ValueError naming the bad part and what to write instead."""
    values: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kind, sep, raw = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in MIX_KINDS:
            raise ValueError(
                f"--feedback-mix: {part!r} is not KIND=MULTIPLIER with KIND one of {', '.join(MIX_KINDS)} "
                "(e.g. corrections=0,rankings=2)"
            )
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not value >= 0 or value == float("inf"):
            raise ValueError(
                f"--feedback-mix: {kind} must be a finite number >= 0 (0 = never, 1 = as usual), got {raw!r}"
            )
        if kind in values:
            raise ValueError(f"--feedback-mix: {kind} is given twice")
        values[kind] = value
    return FeedbackMix(**values)


def chance(rate: float, multiplier: float) -> float:
    """A user's rate of a feedback kind times the mix's multiplier, clipped to [0, 1]."""
    return min(1.0, max(0.0, rate * multiplier))


def answers_to_show(compare_rate: float, mix: FeedbackMix, rng: random.Random) -> int:
    """How many answers the app asks for: 3 or 4 for a ranking, 2 for a comparison, else 1."""
    draw = rng.random()
    rank = chance(compare_rate * RANKING_SHARE, mix.rankings)
    if draw < rank:
        return rng.choice((3, 4))
    if draw < rank + min(1.0 - rank, chance(compare_rate * (1 - RANKING_SHARE), mix.comparisons)):
        return 2
    return 1


def feedback_event(
    user_id: str, generation_id: str, *, id_prefix: str, metadata: Mapping[str, str], comment: str = ""
) -> events_pb2.FeedbackEvent:
    """An end user's FeedbackEvent on ``generation_id``, its kind left for the caller to set."""
    created = Timestamp()
    created.GetCurrentTime()
    # A fresh id per decision: the gateway treats a resent id as a duplicate,
    # which the driver relies on when it retries a failed batch.
    return events_pb2.FeedbackEvent(
        feedback_id=f"{id_prefix}-{uuid.uuid4().hex}",
        generation_id=generation_id,
        user_id=user_id,
        created_at=created,
        source=events_pb2.FEEDBACK_SOURCE_END_USER,
        comment=comment,
        metadata=dict(metadata),
    )


def feedback_kind(event: events_pb2.FeedbackEvent) -> str:
    """Which kind of feedback ``event`` carries (rating, preference, ...), for the counters."""
    return event.WhichOneof("kind") or "none"
