"""The consumer side of the trainer: generations and feedback into the ledger.

One EventConsumerLoop (group rlhf-trainer) reads both topics. Feedback is
validated with shared.feedback_rules, generations by
:func:`generation_problems` (invalid → dead letter: a generation without an
id or a prompt would sit in the ledger and poison every later round), then joined to
its generation(s) by the ledger; feedback that arrives first is held and,
after ``hold_s`` without its generation, dead-lettered as
``unknown_generation`` with its source offset. A ranking whose generations
answer different prompts is dead-lettered as ``mixed_prompts`` once they are
all known (at once, or when the last one arrives). The hold counts only time
in which the loop had read the generations topic to its end: a trainer working
through a backlog (after downtime, or a new group) reads the partitions in the
order the fetches return them, often all feedback before the generations it
names, and must not dead-letter feedback whose generation is on the broker,
unread (this once stalled a test for good: its marker feedback was
dead-lettered 1 s after it was read, its generation read 11 s later).

Durability: the ledger transaction is committed in ``before_commit``, i.e.
before the loop commits the batch's Kafka offsets. Expired holds are
dead-lettered (and acknowledged) before the transaction that deletes them
commits, so a crash can repeat a dead letter but never lose one. Counters are
bumped only after the ledger commit, so a replayed batch is not counted twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass

from services.trainer import metrics as tm
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.data.ledger_joins import FeedbackRejected
from shared import metrics
from shared.feedback_rules import (
    INVALID_FEEDBACK_REASON,
    FeedbackLimits,
    ranking_generation_ids,
    timestamp_problems,
    validating_feedback_handler,
)
from shared.kafka import events
from shared.kafka.consumer import ConsumerSettings, EventConsumerLoop, InvalidEvent
from shared.kafka.deadletter import DeadLetterProducer
from shared.kafka.events import ConsumedEvent
from shared.proto.rlhf.v1 import events_pb2

log = logging.getLogger(__name__)

CONSUMER_GROUP = "rlhf-trainer"
UNKNOWN_GENERATION = "unknown_generation"
TOPICS = {events.GENERATIONS_TOPIC: events_pb2.GenerationEvent, events.FEEDBACK_TOPIC: events_pb2.FeedbackEvent}


@dataclass(frozen=True)
class HeldRecord:
    """Enough of a Kafka record for DeadLetterProducer.send: the held feedback
    as it was consumed (the value re-encoded from the ledger)."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list


class FeedbackIngest:
    """Handler + before_commit of the trainer's consumer loop, and the hold expiry."""

    def __init__(
        self,
        ledger: FeedbackLedger,
        dead_letters: DeadLetterProducer,
        *,
        hold_s: float,
        limits: FeedbackLimits = FeedbackLimits(),
    ):
        self.ledger = ledger
        self.dead_letters = dead_letters
        self.hold_s = hold_s
        # The consumer thread and the expiry timer share one SQLite connection.
        self._lock = threading.RLock()
        self._accepted = Tally()
        self._verdicts: Tally[tuple[str, str]] = Tally()  # (model version, verdict)
        self._duplicates = 0
        self._gauges_at = 0.0
        self._limits = limits
        self._handle_feedback = validating_feedback_handler(self._record_feedback, limits)
        # The loop that reads the generations; None (tests driving handle() directly):
        # the hold counts from when the feedback was read, as if always caught up.
        self._loop: EventConsumerLoop | None = None

    def consumer_loop(
        self, bootstrap: str, client_options: dict | None = None, group: str = CONSUMER_GROUP
    ) -> EventConsumerLoop:
        settings = ConsumerSettings(
            bootstrap=bootstrap,
            topics=dict(TOPICS),
            group_id=group,
            client_id="rlhf-trainer",
            caught_up_topics=(events.GENERATIONS_TOPIC,),
            extra=dict(client_options or {}),
        )
        self._loop = EventConsumerLoop(
            settings, self.handle, dead_letters=self.dead_letters, before_commit=self.before_commit
        )
        return self._loop

    # --- the loop's callbacks -------------------------------------------------------
    def handle(self, event: ConsumedEvent) -> None:
        with self._lock:
            if event.topic == events.GENERATIONS_TOPIC:
                problems = generation_problems(event.message, self._limits)
                if problems:
                    raise InvalidEvent(INVALID_FEEDBACK_REASON, "; ".join(f"{f}: {m}" for f, m in problems))
                for joined in self.ledger.record_generation(event.message):
                    self._count_accepted(joined, event.message.model_version)
                self._dead_letter_rejected()
            else:
                self._handle_feedback(event)

    def _record_feedback(self, event: ConsumedEvent) -> None:
        try:
            outcome = self.ledger.record_feedback(
                event.message, source_topic=event.topic, source_partition=event.partition, source_offset=event.offset
            )
        except FeedbackRejected as exc:
            raise InvalidEvent(exc.reason, exc.detail) from exc
        if outcome == "recorded":
            self._count_accepted(event.message, self.ledger.model_version(event.message.generation_id))
        elif outcome == "duplicate":
            self._duplicates += 1

    def _count_accepted(self, feedback: events_pb2.FeedbackEvent, model_version: str) -> None:
        self._accepted[feedback.WhichOneof("kind")] += 1
        verdict = feedback_verdict(feedback)
        if verdict:
            self._verdicts[(model_version, verdict)] += 1

    def before_commit(self) -> None:
        """Dead-letter expired holds, then make the batch durable (before offsets commit)."""
        with self._lock:
            self._dead_letter_expired()
            self.ledger.commit()
            self._publish_counts()
        self.refresh_gauges(min_interval_s=1.0)

    # --- hold expiry (also run by a timer: no batch may come for a long time) -------
    def expire_held(self) -> int:
        with self._lock:
            count = self._dead_letter_expired()
            if count:
                self.ledger.commit()
            self._publish_counts()
        self.refresh_gauges()
        return count

    def _dead_letter_expired(self) -> int:
        read_until = None if self._loop is None else self._loop.caught_up_at(events.GENERATIONS_TOPIC)
        if self._loop is not None and read_until is None:
            return 0  # the generations topic was never read to its end: any held generation may be unread
        expired = self.ledger.expire_pending(self.hold_s, caught_up_at=read_until)
        for held in expired:
            feedback = events_pb2.FeedbackEvent.FromString(held.payload)
            _, headers = events.encode(feedback)
            record = HeldRecord(
                held.source_topic,
                held.source_partition,
                held.source_offset,
                feedback.generation_id.encode(),
                held.payload,
                headers,
            )
            missing = feedback.generation_id
            if feedback.WhichOneof("kind") == "preference":
                missing = f"{feedback.preference.chosen_generation_id} / {feedback.preference.rejected_generation_id}"
            elif feedback.WhichOneof("kind") == "ranking":
                missing = " / ".join(ranking_generation_ids(feedback.ranking))
            self.dead_letters.send(
                record,
                UNKNOWN_GENERATION,
                f"feedback {feedback.feedback_id} waited {held.held_s:.0f} s for generation "
                f"{missing}, which never arrived on {events.GENERATIONS_TOPIC}",
            )
        return len(expired)

    def _dead_letter_rejected(self) -> None:
        """Held feedback the generation just consumed completed but could not join (a
        ranking across prompts): dead-lettered before the transaction that drops it commits."""
        for held in self.ledger.take_rejected():
            _, headers = events.encode(events_pb2.FeedbackEvent.FromString(held.payload))
            key = events_pb2.FeedbackEvent.FromString(held.payload).generation_id.encode()
            record = HeldRecord(
                held.source_topic, held.source_partition, held.source_offset, key, held.payload, headers
            )
            self.dead_letters.send(record, held.reason, held.detail)

    def _publish_counts(self) -> None:
        for kind, n in self._accepted.items():
            tm.FEEDBACK_ACCEPTED.labels(kind).inc(n)
        if self._duplicates:
            tm.FEEDBACK_DUPLICATES.inc(self._duplicates)
        for (version, verdict), n in self._verdicts.items():
            tm.FEEDBACK_VERDICTS.labels(version, verdict).inc(n)
        self._verdicts.clear()
        self._accepted.clear()
        self._duplicates = 0

    def refresh_gauges(self, min_interval_s: float = 0.0) -> None:
        """Ledger size gauges; COUNT(*) is not free, so at most once per interval."""
        now = time.monotonic()
        if now - self._gauges_at < min_interval_s:
            return
        self._gauges_at = now
        with self._lock:
            counts = self.ledger.counts()
            generations = self.ledger.generations_seen()
            pending = self.ledger.pending_count()
        for kind, n in counts.items():
            tm.LEDGER_FEEDBACK.labels(kind).set(n)
        tm.LEDGER_GENERATIONS.set(generations)
        tm.PENDING_JOIN.set(pending)


def feedback_verdict(feedback: events_pb2.FeedbackEvent) -> str:
    """'satisfied' / 'unsatisfied' for feedback that judges one response, '' for the rest
    (a preference compares two; a zero rating says neither)."""
    kind = feedback.WhichOneof("kind")
    if kind == "rating":
        rating = feedback.rating
        value = (
            rating.score
            if rating.WhichOneof("value") == "score"
            else (1.0 if rating.thumb == events_pb2.THUMB_UP else -1.0)
        )
        return "satisfied" if value > 0 else "unsatisfied" if value < 0 else ""
    return "unsatisfied" if kind in ("flag", "correction") else ""


def generation_problems(event: events_pb2.GenerationEvent, limits: FeedbackLimits) -> list[tuple[str, str]]:
    """What makes a GenerationEvent unusable for training (empty when it is fine).
    An empty response is fine: a policy can sample end-of-sequence first."""
    out = []
    if not event.generation_id.strip():
        out.append(("generation_id", "is required"))
    for name in ("generation_id", "request_id", "user_id", "model_version"):
        if len(getattr(event, name)) > limits.max_id_chars:
            out.append((name, f"is {len(getattr(event, name))} characters; the limit is {limits.max_id_chars}"))
    if not event.prompt.strip():
        out.append(("prompt", "must not be empty: a generation is trained on by its prompt"))
    if event.HasField("created_at"):
        out.extend(timestamp_problems(event.created_at, "created_at"))
    return out


def consumer_lag(group: str = CONSUMER_GROUP) -> dict[str, int]:
    """Records behind the end, per topic, as the consumer loop last measured it."""
    lag: dict[str, int] = {}
    for family in metrics.CONSUMER_LAG.collect():
        for sample in family.samples:
            if sample.labels.get("group") == group:
                topic = sample.labels["topic"]
                lag[topic] = lag.get(topic, 0) + int(sample.value)
    return lag
