"""The trainer's durable feedback ledger (SQLite).

Every generation and every accepted feedback event is written here before the
consumer commits its Kafka offsets, inside one transaction per polled batch,
so after a crash the ledger and the committed offsets agree: an event is
either in the ledger and committed, or neither (and is consumed again, then
ignored by its id). That makes at-least-once delivery exactly-once in effect.

Feedback may arrive before its generation (two topics, no order between
them): it is held in ``pending_feedback`` and joined when the generation
arrives, or handed back for dead-lettering after ``hold_s``.

A user's repeated votes on one generation count once: a later rating by the
same user on the same generation replaces the earlier one; a repeated
preference for the same pair (ranking of the same generations) is ignored.

A ranking is stored as one row (its groups as JSON in ``text``); only once
every ranked generation is known is it checked to be about one prompt: one
that mixes prompts is handed back (:meth:`FeedbackLedger.take_rejected`, or
:class:`FeedbackRejected` when it arrives last) for dead-lettering.

A deletion request (FeedbackEvent kind ``deletion``) is recorded in
``deletions``: from then on every training-set query
(services.trainer.data.training_sets) skips that user's rows, and the caps of
services.trainer.data.fair_share keep any one user from steering training.
The rows stay, so `rlhf lineage --user` can say which versions they shaped.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from services.trainer.data import preference_sets, training_sets
from services.trainer.data.fair_share import UserCaps
from services.trainer.data.training_sets import Comparison, Demonstration
from shared.feedback_rules import ranking_generation_ids
from shared.proto.rlhf.v1 import events_pb2

__all__ = [
    "Comparison",
    "Demonstration",
    "ExpiredFeedback",
    "FeedbackLedger",
    "FeedbackRejected",
    "RejectedFeedback",
    "UserCaps",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    generation_id TEXT PRIMARY KEY,
    request_id    TEXT NOT NULL,
    prompt        TEXT NOT NULL,
    response      TEXT NOT NULL,
    model_version TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS generations_by_prompt ON generations(prompt);
CREATE INDEX IF NOT EXISTS generations_by_time ON generations(created_at);
CREATE INDEX IF NOT EXISTS generations_by_version ON generations(model_version, created_at);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id   TEXT PRIMARY KEY,
    generation_id TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    -- the vote identity: one row per (user, generation(s), kind)
    vote_key      TEXT NOT NULL UNIQUE,
    score         REAL,
    other_generation_id TEXT,
    text          TEXT,
    flag          TEXT,
    source        TEXT NOT NULL,
    created_at    REAL NOT NULL,
    seq           INTEGER NOT NULL,
    -- when the trainer recorded it (its clock, not the client's): the per-user window limit counts by it
    received_at   REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS feedback_by_seq ON feedback(seq);
CREATE INDEX IF NOT EXISTS feedback_by_generation ON feedback(generation_id);
CREATE TABLE IF NOT EXISTS pending_feedback (
    feedback_id   TEXT PRIMARY KEY,
    generation_id TEXT NOT NULL,
    payload       BLOB NOT NULL,
    source_topic  TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset INTEGER NOT NULL,
    received_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_by_generation ON pending_feedback(generation_id);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deletions (
    feedback_id   TEXT PRIMARY KEY,  -- the request's idempotency key
    user_id       TEXT NOT NULL,
    reason        TEXT NOT NULL,
    requested_at  REAL NOT NULL,
    received_at   REAL NOT NULL,
    seq           INTEGER NOT NULL   -- the ledger's last feedback seq when it arrived
);
CREATE INDEX IF NOT EXISTS deletions_by_user ON deletions(user_id);
"""

# Indexes on columns that older ledgers gain in _migrate().
_INDEXES = """
CREATE INDEX IF NOT EXISTS feedback_by_user ON feedback(user_id);
"""

FEEDBACK_KINDS = ("rating", "preference", "ranking", "correction", "flag")
# Dead-letter reason of a ranking whose generations answer different prompts.
MIXED_PROMPTS = "mixed_prompts"
_FEEDBACK_COLUMNS = (
    "feedback_id, generation_id, user_id, kind, vote_key, score, other_generation_id, text, flag, source, "
    "created_at, seq, received_at"
)


@dataclass(frozen=True)
class VersionFeedback:
    """A rating, flag or preference on a generation, with the versions that served it."""

    kind: str  # "rating", "flag" or "preference"
    score: float | None  # a rating's score (a thumb is +1 / -1); None otherwise
    version: str  # the model_version of the rated (for a preference: the chosen) generation
    other_version: str  # a preference's rejected generation's model_version ("" otherwise)


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


class FeedbackLedger:
    """SQLite ledger used from one thread (the consumer loop's).

    ``caps``: the per-user limits every training-set read applies."""

    def __init__(self, path: str | Path, caps: UserCaps = UserCaps()):
        self.path = Path(path)
        self.caps = caps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level="DEFERRED", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._db.executescript(_INDEXES)
        self._db.commit()
        self._rejected: list[RejectedFeedback] = []

    def _migrate(self) -> None:
        """Bring a ledger written by an older trainer up to this schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(feedback)")}
        if "received_at" not in columns:
            self._db.execute("ALTER TABLE feedback ADD COLUMN received_at REAL NOT NULL DEFAULT 0")
            # Its best estimate for old rows: when the client said it was sent.
            self._db.execute("UPDATE feedback SET received_at = created_at")

    def close(self) -> None:
        self._db.close()

    def commit(self) -> None:
        """Make everything recorded since the last commit durable."""
        self._db.commit()

    # --- writes (inside the consumer's open transaction) -------------------------

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

    def _record_deletion(self, event: events_pb2.FeedbackEvent) -> str:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO deletions VALUES (?, ?, ?, ?, ?, ?)",
            (
                event.feedback_id,
                event.user_id,
                event.deletion.reason,
                event.created_at.ToNanoseconds() / 1e9,
                time.time(),
                self.max_seq(),
            ),
        )
        return "recorded" if cur.rowcount > 0 else "duplicate"

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
        insert = f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
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

    def model_version(self, generation_id: str) -> str:
        """The policy version that wrote ``generation_id`` ('' if the ledger lacks it)."""
        row = self._db.execute(
            "SELECT model_version FROM generations WHERE generation_id = ?", (generation_id,)
        ).fetchone()
        return row[0] if row else ""

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM feedback").fetchone()
        return int(row[0])

    # --- state the trainer keeps beside the data ---------------------------------

    def get_state(self, key: str, default: str = "") -> str:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_state(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value)
        )

    # --- reads ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows per feedback kind, and deletion requests (``deletion``)."""
        out = {kind: 0 for kind in FEEDBACK_KINDS}
        for kind, n in self._db.execute("SELECT kind, COUNT(*) FROM feedback GROUP BY kind"):
            out[kind] = n
        out["deletion"] = int(self._db.execute("SELECT COUNT(*) FROM deletions").fetchone()[0])
        return out

    def generations_seen(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def pending_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM pending_feedback").fetchone()[0]

    def feedback_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT feedback_id FROM feedback ORDER BY seq")]

    def max_seq(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM feedback").fetchone()[0])

    def comparisons(self, after_seq: int = 0) -> list[Comparison]:
        """Preference and rating pairs newer than ``after_seq`` that may be trained
        on, weighted by the per-user caps (services.trainer.data.training_sets)."""
        return training_sets.comparisons(self._db, self.caps, after_seq)

    def version_feedback(self, canary: str, stable: str, since: float) -> list[VersionFeedback]:
        """Ratings, flags and preferences on generations of ``canary`` and ``stable`` created
        since ``since`` (by the policy's clock): what a canary rollout is judged on."""
        rows = self._db.execute(
            "SELECT f.kind, f.score, g.model_version, COALESCE(o.model_version, '') FROM generations g "
            "JOIN feedback f ON f.generation_id = g.generation_id "
            "LEFT JOIN generations o ON o.generation_id = f.other_generation_id "
            "WHERE f.kind IN ('rating', 'flag', 'preference') "
            "AND g.model_version IN (?, ?) AND g.created_at >= ? ORDER BY f.seq",
            (canary, stable, since),
        )
        return [VersionFeedback(kind, score, version, other) for kind, score, version, other in rows]

    def demonstrations(self, limit: int = 1000) -> list[Demonstration]:
        return training_sets.demonstrations(self._db, self.caps, limit)

    def live_pairs(self, limit: int, is_heldout) -> list[preference_sets.PreferencePair]:
        """Recent preference pairs for online DPO (services.trainer.data.preference_sets)."""
        return preference_sets.live_pairs(self._db, self.caps, limit, is_heldout)

    def rated_responses(self, limit: int, is_heldout, flags: bool = True) -> list[preference_sets.RatedResponse]:
        """Recent thumbs (and flags) for KTO (services.trainer.data.preference_sets)."""
        return preference_sets.rated_responses(self._db, self.caps, limit, is_heldout, flags)

    def distinct_prompts(self) -> list[str]:
        """Every distinct prompt seen (a walk of the prompt index) of users who may be
        trained on: the gate's held-out slice is drawn from these."""
        return training_sets.distinct_prompts(self._db)

    def recent_prompts(self, limit: int = 512) -> list[str]:
        """Distinct prompts of the most recent generations: what users ask now."""
        return training_sets.recent_prompts(self._db, limit)

    # --- lineage and deletion requests -----------------------------------------------
    def excluded_users(self) -> int:
        """How many users asked for their data to be excluded (read_user_rows: who, and what they sent)."""
        return int(self._db.execute("SELECT COUNT(DISTINCT user_id) FROM deletions").fetchone()[0])


def _generation_ids(event: events_pb2.FeedbackEvent) -> list[str]:
    """Every generation ``event`` refers to."""
    kind = event.WhichOneof("kind")
    if kind == "preference":
        return [event.preference.chosen_generation_id, event.preference.rejected_generation_id]
    if kind == "ranking":
        return ranking_generation_ids(event.ranking)
    return [event.generation_id]


def read_user_rows(path: str | Path, user_id: str) -> tuple[list[tuple[int, str, str]], list[tuple[str, float, str]]]:
    """One user's feedback rows ``(seq, kind, feedback_id)`` by seq, and deletion
    requests ``(feedback_id, received_at, reason)``, from a ledger opened
    read-only (a live trainer may be writing it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trainer ledger at {path}; pass --state-dir (the trainer's state directory)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT seq, kind, feedback_id FROM feedback WHERE user_id = ? ORDER BY seq", (user_id,)
        ).fetchall()
        try:
            deletions = db.execute(
                "SELECT feedback_id, received_at, reason FROM deletions WHERE user_id = ? ORDER BY received_at",
                (user_id,),
            ).fetchall()
        except sqlite3.OperationalError:  # a ledger from before deletion requests existed
            deletions = []
    finally:
        db.close()
    return [tuple(r) for r in rows], [tuple(d) for d in deletions]  # type: ignore[misc]
