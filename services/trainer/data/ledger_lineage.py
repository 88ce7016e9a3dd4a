"""Lineage queries on the feedback ledger: which policy version wrote a generation,
the feedback each version got (what a canary is judged on), and one user's rows
and deletion requests (`rlhf lineage --user`)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from services.trainer.data.ledger_schema import LedgerConnection


@dataclass(frozen=True)
class VersionFeedback:
    """A rating, flag or preference on a generation, with the versions that served it."""

    kind: str  # "rating", "flag" or "preference"
    score: float | None  # a rating's score (a thumb is +1 / -1); None otherwise
    version: str  # the model_version of the rated (for a preference: the chosen) generation
    other_version: str  # a preference's rejected generation's model_version ("" otherwise)


class LedgerLineage(LedgerConnection):
    """Versions and the feedback on them, read from the ledger."""

    def model_version(self, generation_id: str) -> str:
        """The policy version that wrote ``generation_id`` ('' if the ledger lacks it)."""
        row = self._db.execute(
            "SELECT model_version FROM generations WHERE generation_id = ?", (generation_id,)
        ).fetchone()
        return row[0] if row else ""

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
    return [tuple(r) for r in rows], [tuple(d) for d in deletions]
