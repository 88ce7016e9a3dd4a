"""The feedback ledger's SQLite schema and connection (services.trainer.data.ledger).

:class:`LedgerConnection` opens (and migrates) the database and holds what
every part of the ledger shares: the connection, the per-user caps, the
transaction (:meth:`LedgerConnection.commit`), the trainer's state table and
the feedback sequence number.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.trainer.data.fair_share import UserCaps

SCHEMA = """
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
INDEXES = """
CREATE INDEX IF NOT EXISTS feedback_by_user ON feedback(user_id);
"""

FEEDBACK_KINDS = ("rating", "preference", "ranking", "correction", "flag")
FEEDBACK_COLUMNS = (
    "feedback_id, generation_id, user_id, kind, vote_key, score, other_generation_id, text, flag, source, "
    "created_at, seq, received_at"
)


class LedgerConnection:
    """SQLite ledger used from one thread (the consumer loop's).

    ``caps``: the per-user limits every training-set read applies."""

    def __init__(self, path: str | Path, caps: UserCaps = UserCaps()):
        self.path = Path(path)
        self.caps = caps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level="DEFERRED", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._db.executescript(INDEXES)
        self._db.commit()

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

    # --- state the trainer keeps beside the data ---------------------------------

    def get_state(self, key: str, default: str = "") -> str:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_state(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value)
        )

    def max_seq(self) -> int:
        """The newest feedback row's sequence number (0 for none)."""
        return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM feedback").fetchone()[0])
