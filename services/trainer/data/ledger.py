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

The parts: the schema and connection (services.trainer.data.ledger_schema),
the write path with its joins (ledger_joins), deletion requests
(ledger_deletions), the training-set reads (ledger_reads) and lineage queries
(ledger_lineage); :class:`FeedbackLedger` is all of them over one connection.
"""

from __future__ import annotations

from services.trainer.data.ledger_joins import LedgerJoins
from services.trainer.data.ledger_lineage import LedgerLineage
from services.trainer.data.ledger_reads import LedgerReads


class FeedbackLedger(LedgerJoins, LedgerReads, LedgerLineage):
    """SQLite ledger used from one thread (the consumer loop's): writes and joins
    (:class:`LedgerJoins`, deletion requests included), training-set reads
    (:class:`LedgerReads`) and lineage (:class:`LedgerLineage`).

    ``caps``: the per-user limits every training-set read applies."""
