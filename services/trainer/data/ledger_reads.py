"""The feedback ledger's reads for training and status: the training sets (through
services.trainer.data.training_sets and preference_sets, which apply the
deletion requests and the per-user caps) and the counts the trainer reports."""

from __future__ import annotations

from services.trainer.data import preference_sets, training_sets
from services.trainer.data.ledger_schema import FEEDBACK_KINDS, LedgerConnection
from services.trainer.data.training_sets import Comparison, Demonstration


class LedgerReads(LedgerConnection):
    """Training sets and counts, read from the ledger."""

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

    def comparisons(self, after_seq: int = 0) -> list[Comparison]:
        """Preference and rating pairs newer than ``after_seq`` that may be trained
        on, weighted by the per-user caps (services.trainer.data.training_sets)."""
        return training_sets.comparisons(self._db, self.caps, after_seq)

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
