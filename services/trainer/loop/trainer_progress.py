"""What the online trainer persists and reports: its progress through the ledger
(trainer_state.json), its states, and the candidates it decided."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.trainer.loop.policy_round import write_json_atomic

STATE_FILE = "trainer_state.json"
STARTING, IDLE, TRAINING_REWARD, TRAINING_POLICY, EVALUATING, PAUSED = (
    "STARTING",
    "IDLE",
    "TRAINING_REWARD",
    "TRAINING_POLICY",
    "EVALUATING",
    "PAUSED",
)


@dataclass(frozen=True)
class CandidateRecord:
    kind: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    decided_at: float = field(default_factory=time.time)


@dataclass
class Progress:
    """What the trainer has consumed so far; persisted in trainer_state.json."""

    last_round_seq: int = 0  # ledger seq when the last policy round began
    last_reward_seq: int = 0  # ledger seq of the last comparisons used for the reward model
    paused_reason: str = ""
    paused: bool = False
    # What the policy candidate in training has used so far (lineage.CandidateLineage), across rounds.
    candidate: dict = field(default_factory=dict)


def load_progress(path: Path) -> Progress:
    """The saved progress; a fresh one when the file is missing or unreadable."""
    try:
        return Progress(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return Progress()


def save_progress(path: Path, progress: Progress) -> None:
    write_json_atomic(path, progress.__dict__)
