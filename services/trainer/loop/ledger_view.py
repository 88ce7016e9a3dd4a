"""The training thread's view of the ledger: its own SQLite connection (WAL:
readers see committed data and never block the consumer), read under the
per-user caps of services.trainer.data.fair_share and a lock (the gRPC status
reads share it), with the gate's held-out slice (services.trainer.loop.heldout)
kept out of everything trained on."""

from __future__ import annotations

import threading

from services.trainer.config import TrainerConfig
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.data.ledger_lineage import VersionFeedback
from services.trainer.loop.heldout import HeldoutSplit, heldout_report
from services.trainer.methods.registry import PREFERENCE_METHODS, DataSource


class LedgerView:
    """What the online loop reads from the ledger, each read under ``lock``."""

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.ledger = FeedbackLedger(config.ledger_path, caps=config.user_caps)
        self.lock = threading.Lock()
        self.split = HeldoutSplit(config.gate_heldout_one_in)

    def preference_source(self) -> DataSource | None:
        """DPO's live pairs or KTO's thumbs outside the held-out slice; None for the methods that sample."""
        if self.config.policy_method not in PREFERENCE_METHODS:
            return None
        from services.trainer.methods.dpo.dpo_data import ledger_source

        return ledger_source(self.ledger, self.split.is_heldout, self.config.policy_config(), lock=self.lock)

    def snapshot(self) -> dict:
        """Counts for GetStatus (committed data only)."""
        with self.lock:
            return {
                "counts": self.ledger.counts(),
                "generations": self.ledger.generations_seen(),
                "pending": self.ledger.pending_count(),
                "max_seq": self.ledger.max_seq(),
            }

    def max_seq(self) -> int:
        with self.lock:
            return self.ledger.max_seq()

    def heldout_status(self) -> dict[str, int | str]:
        """How big the gate's held-out sets are, against what a promotion needs;
        ``waiting_for`` says in words what is missing (empty when ready)."""
        prompts = len(self.gate_prompts())
        with self.lock:
            pairs = len(self.split.split_pairs(self.ledger.comparisons(), lambda c: c.prompt)[1])
        return heldout_report(prompts, pairs, self.config.gate_min_prompts, self.config.reward_min_heldout_comparisons)

    def reward_update_due(self, last_reward_seq: int) -> bool:
        """Enough new comparisons since ``last_reward_seq``, and enough held out to judge the result."""
        config = self.config
        with self.lock:
            new = self.ledger.comparisons(after_seq=last_reward_seq)
            everything = self.ledger.comparisons() if len(new) >= config.reward_min_new_comparisons else []
        heldout = self.split.split_pairs(everything, lambda c: c.prompt)[1]
        # Training before the held-out set can judge the result would be wasted: wait for it.
        return len(new) >= config.reward_min_new_comparisons and len(heldout) >= config.reward_min_heldout_comparisons

    def policy_round_due(self, last_round_seq: int) -> bool:
        """Enough distinct training prompts, and enough feedback since the last round began."""
        config = self.config
        with self.lock:
            recent = self.ledger.recent_prompts(limit=4 * config.policy_min_prompts)
            new_feedback = self.ledger.max_seq() - last_round_seq
        prompts = len(self.split.training(recent))
        return prompts >= config.policy_min_prompts and new_feedback >= max(1, config.policy_min_new_feedback)

    def reward_data(self, last_reward_seq: int):
        """(ledger seq now, comparisons since ``last_reward_seq``, all comparisons, excluded users)."""
        with self.lock:
            upto = self.ledger.max_seq()
            new = self.ledger.comparisons(after_seq=last_reward_seq)
            return upto, new, self.ledger.comparisons(), self.ledger.excluded_users()

    def training_data(self) -> tuple[list[str], list[tuple[str, str]], tuple[int, list[int]]]:
        """Recent prompts and corrections, minus the gate's held-out slice (a policy trained on
        the prompts it is judged on would pass the gate on memory), and (ledger seq, correction
        seqs) of that data, for the candidate's lineage."""
        with self.lock:
            prompts = self.ledger.recent_prompts(limit=512)
            demos = [d for d in self.ledger.demonstrations(limit=256) if not self.split.is_heldout(d.prompt)]
            seen = (self.ledger.max_seq(), [d.seq for d in demos])
        return self.split.training(prompts), [(d.prompt, d.response) for d in demos], seen

    def gate_prompts(self) -> list[str]:
        """The held-out prompts from traffic a candidate is evaluated on."""
        with self.lock:
            prompts = self.ledger.distinct_prompts()
        return self.split.heldout(prompts, limit=self.config.gate_prompts)

    def version_feedback(self, canary: str, stable: str, since: float) -> list[VersionFeedback]:
        with self.lock:
            return self.ledger.version_feedback(canary, stable, since)
