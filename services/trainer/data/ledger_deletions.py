"""Deletion requests in the feedback ledger (FeedbackEvent kind ``deletion``).

A request is recorded in ``deletions`` with the ledger's last feedback seq when
it arrived; from then on every training-set query
(services.trainer.data.training_sets) skips that user's rows. The rows stay, so
`rlhf lineage --user` can say which versions they shaped
(services.trainer.data.ledger_lineage).
"""

from __future__ import annotations

import time

from services.trainer.data.ledger_schema import LedgerConnection
from shared.proto.rlhf.v1 import events_pb2


class LedgerDeletions(LedgerConnection):
    """Records deletion requests and counts the users who made one."""

    def _record_deletion(self, event: events_pb2.FeedbackEvent) -> str:
        """Record a deletion request (idempotent by its feedback_id): "recorded" or "duplicate"."""
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

    def excluded_users(self) -> int:
        """How many users asked for their data to be excluded (read_user_rows: who, and what they sent)."""
        return int(self._db.execute("SELECT COUNT(DISTINCT user_id) FROM deletions").fetchone()[0])
