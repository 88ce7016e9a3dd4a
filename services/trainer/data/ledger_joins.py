"""The feedback ledger's write path: generations and feedback in, joined.

Everything here runs inside the consumer's open transaction (committed by
:meth:`LedgerConnection.commit` before the Kafka offsets). Feedback whose
generation(s) are not known yet is held in ``pending_feedback`` and joined when
the last one arrives, or handed back for dead-lettering after a hold
(:meth:`LedgerJoins.expire_pending`); a ranking across prompts is refused
(:class:`FeedbackRejected`, or :meth:`LedgerJoins.take_rejected` when it was
held). A user's repeated votes count once (the ``vote_key`` column).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from services.trainer.data.fair_share import UserCaps
from services.trainer.data.ledger_deletions import LedgerDeletions
from services.trainer.data.ledger_schema import FEEDBACK_COLUMNS
from shared.feedback_rules import ranking_generation_ids
from shared.proto.rlhf.v1 import events_pb2

# Dead-letter reason of a ranking whose generations answer different prompts.
MIXED_PROMPTS = "mixed_prompts"


@dataclass(frozen=True)
class ExpiredFeedback:
    """Held feedback whose generation never arrived: to be dead-lettered."""

    payload: bytes
    source_topic: str
    source_partition: int
    source_offset: int
    held_s: float


class FeedbackRejected(Exception):
    """Feedback whose generations are all known but cannot be joined (a ranking
    across prompts): to be dead-lettered with ``reason``, nothing recorded."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RejectedFeedback:
    """Held feedback refused when its last generation arrived: to be dead-lettered."""

    payload: bytes
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    detail: str


class LedgerJoins(LedgerDeletions):
    """Stores generations and feedback (deletion requests included), joining them."""

    def __init__(self, path: str | Path, caps: UserCaps = UserCaps()):
        super().__init__(path, caps)
        self._rejected: list[RejectedFeedback] = []

    def record_generation(self, event: events_pb2.GenerationEvent) -> list[events_pb2.FeedbackEvent]:
        """Store a generation (idempotent); returns held feedback it releases, now joined.
        Held feedback it completes but that cannot be joined goes to :meth:`take_rejected`."""
        self._db.execute(
            "INSERT OR IGNORE INTO generations VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                event.generation_id,
                event.request_id,
                event.prompt,
                event.response,
                event.model_version,
                event.user_id,
                event.created_at.ToNanoseconds() / 1e9 or time.time(),
            ),
        )
        released = []
        rows = self._db.execute(
            "SELECT feedback_id, payload, source_topic, source_partition, source_offset "
            "FROM pending_feedback WHERE generation_id = ?",
            (event.generation_id,),
        ).fetchall()
        for feedback_id, payload, topic, partition, offset in rows:
            feedback = events_pb2.FeedbackEvent.FromString(payload)
            missing = self._missing_generation(feedback)
            if missing:
                # Wait for the next missing one (a preference or ranking names several).
                self._db.execute(
                    "UPDATE pending_feedback SET generation_id = ? WHERE feedback_id = ?", (missing, feedback_id)
                )
                continue
            self._db.execute("DELETE FROM pending_feedback WHERE feedback_id = ?", (feedback_id,))
            problem = self._join_problem(feedback)
            if problem:
                self._rejected.append(RejectedFeedback(payload, topic, partition, offset, *problem))
                continue
            self._insert_feedback(feedback)
            released.append(feedback)
        return released

    def take_rejected(self) -> list[RejectedFeedback]:
        """Held feedback that :meth:`record_generation` refused since the last call."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def record_feedback(
        self,
        event: events_pb2.FeedbackEvent,
        *,
        source_topic: str = "",
        source_partition: int = 0,
        source_offset: int = 0,
    ) -> str:
        """Store feedback whose generation(s) are known, else hold it.

        Returns "recorded", "duplicate" (feedback_id or vote seen before) or "held".
        A deletion request is recorded at once (it names no generation).
        Raises :class:`FeedbackRejected` (nothing written) for a ranking across prompts.
        """
        if event.WhichOneof("kind") == "deletion":
            return self._record_deletion(event)
        if self._db.execute("SELECT 1 FROM feedback WHERE feedback_id = ?", (event.feedback_id,)).fetchone():
            return "duplicate"
        if not self._all_generations_known(event):
            self._db.execute(
                "INSERT OR IGNORE INTO pending_feedback VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    event.feedback_id,
                    self._missing_generation(event),
                    event.SerializeToString(),
                    source_topic,
                    source_partition,
                    source_offset,
                    time.time(),
                ),
            )
            return "held"
        problem = self._join_problem(event)
        if problem:
            raise FeedbackRejected(*problem)
        return "recorded" if self._insert_feedback(event) else "duplicate"

    def expire_pending(
        self, hold_s: float, now: float | None = None, caught_up_at: float | None = None
    ) -> list[ExpiredFeedback]:
        """Remove and return feedback held longer than ``hold_s``, counting the hold only up to
        ``caught_up_at`` when given (the last time every generation on the broker had been read:
        a generation still unread must not make its feedback expire)."""
        now = now or time.time()
        cutoff = min(now, caught_up_at if caught_up_at is not None else now) - hold_s
        rows = self._db.execute(
            "SELECT feedback_id, payload, source_topic, source_partition, source_offset, received_at "
            "FROM pending_feedback WHERE received_at < ?",
            (cutoff,),
        ).fetchall()
        self._db.executemany("DELETE FROM pending_feedback WHERE feedback_id = ?", [(r[0],) for r in rows])
        return [ExpiredFeedback(r[1], r[2], r[3], r[4], now - r[5]) for r in rows]

    def _all_generations_known(self, event: events_pb2.FeedbackEvent) -> bool:
        return self._missing_generation(event) == ""

    def _missing_generation(self, event: events_pb2.FeedbackEvent) -> str:
        """The first generation id the event refers to that the ledger lacks ('' if none)."""
        return next((gid for gid in _generation_ids(event) if not self._generation_exists(gid)), "")

    def _join_problem(self, event: events_pb2.FeedbackEvent) -> tuple[str, str] | None:
        """(reason, detail) when known generations cannot be joined: a ranking must rank one prompt's answers."""
        if event.WhichOneof("kind") != "ranking":
            return None
        ids = _generation_ids(event)
        marks = ",".join("?" * len(ids))
        prompts = self._db.execute(
            f"SELECT COUNT(DISTINCT prompt) FROM generations WHERE generation_id IN ({marks})", ids
        ).fetchone()[0]
        if prompts <= 1:
            return None
        return (
            MIXED_PROMPTS,
            f"ranking {event.feedback_id} orders generations of {prompts} different prompts; "
            "a ranking orders answers to one prompt",
        )

    def _generation_exists(self, generation_id: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM generations WHERE generation_id = ?", (generation_id,)).fetchone()
            is not None
        )

    def _insert_feedback(self, event: events_pb2.FeedbackEvent) -> bool:
        kind = event.WhichOneof("kind")
        score = other = text = flag = None
        vote_key = f"{event.user_id}|{event.generation_id}|{kind}"
        if kind == "rating":
            rating = event.rating
            score = (
                rating.score
                if rating.WhichOneof("value") == "score"
                else (1.0 if rating.thumb == events_pb2.THUMB_UP else -1.0)
            )
        elif kind == "preference":
            pref = event.preference
            other = pref.rejected_generation_id
            pair = "|".join(sorted((pref.chosen_generation_id, pref.rejected_generation_id)))
            vote_key = f"{event.user_id}|{pair}|preference"
        elif kind == "ranking":
            ids = ranking_generation_ids(event.ranking)
            text = json.dumps([list(group.generation_ids) for group in event.ranking.groups])
            vote_key = f"{event.user_id}|{'|'.join(sorted(ids))}|ranking"
        elif kind == "correction":
            text = event.correction.response
            vote_key = f"{event.feedback_id}|correction"  # each correction is its own demonstration
        elif kind == "flag":
            flag = events_pb2.FlagCategory.Name(event.flag.category)
            vote_key = f"{event.user_id}|{event.generation_id}|flag|{flag}"
        seq = self._next_seq()
        values = (
            event.feedback_id,
            event.generation_id,
            event.user_id,
            kind,
            vote_key,
            score,
            other,
            text,
            flag,
            events_pb2.FeedbackSource.Name(event.source),
            event.created_at.ToNanoseconds() / 1e9,
            seq,
            time.time(),
        )
        insert = f"INSERT INTO feedback ({FEEDBACK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
        if kind == "rating":
            # The user's latest rating of this generation replaces the earlier one.
            cur = self._db.execute(
                insert + " ON CONFLICT(vote_key) DO UPDATE SET "
                "feedback_id=excluded.feedback_id, score=excluded.score, created_at=excluded.created_at, "
                "seq=excluded.seq, received_at=excluded.received_at",
                values,
            )
            return cur.rowcount > 0
        cur = self._db.execute(insert.replace("INSERT", "INSERT OR IGNORE", 1), values)
        return cur.rowcount > 0

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM feedback").fetchone()
        return int(row[0])


def _generation_ids(event: events_pb2.FeedbackEvent) -> list[str]:
    """Every generation ``event`` refers to."""
    kind = event.WhichOneof("kind")
    if kind == "preference":
        return [event.preference.chosen_generation_id, event.preference.rejected_generation_id]
    if kind == "ranking":
        return ranking_generation_ids(event.ranking)
    return [event.generation_id]
