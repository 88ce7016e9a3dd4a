"""What made a version, in its manifest notes, and which versions a user's feedback shaped.

Notes (strings, as manifests hold them) the trainer writes:

- reward versions: ``feedback_seq_from`` / ``feedback_seq_to``, the ledger seq
  range of the new comparisons the update trained on (rating pairs may also
  reach back to older ratings of the same prompt), ``new_comparisons``,
  ``user_caps`` and ``excluded_users``;
- policy versions: ``reward_version`` (the version that scored the gate's
  evaluation), ``reward_versions`` (those that scored its PPO rollouts),
  ``corrections_seqs`` (the ledger seqs of the corrections mixed into its
  PPO steps, as ranges like ``12-15,31``), ``feedback_seq_to`` (the ledger's
  last seq when its last step read its data), ``rounds``;
- both: ``promoted_by``, ``promotion_reason``, ``promotion_event_id``
  (services.trainer.loop.promotion), beside the gate's evidence in
  ``eval_metrics``.

The model store's history (ModelStore.history) adds every later move of
CURRENT: operator promotions and rollbacks, by whom, when, with the event id.

A LoRA adapter version's manifest names its ``base_version`` (the full weights
it applies to) beside its parent: :func:`base_note` says so wherever a version
is described, since its behaviour is the base's as much as the adapter's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from services.trainer.data.fair_share import UserCaps

UNVERSIONED_REWARD = "unversioned reward callable"
# Feedback kinds each model kind learns from directly.
REWARD_KINDS = frozenset({"preference", "rating"})


def compact_ranges(values: Iterable[int]) -> str:
    """Sorted distinct integers as ranges: [1, 2, 3, 7] -> "1-3,7"."""
    ordered = sorted(set(values))
    parts: list[str] = []
    start = prev = None
    for v in ordered:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = v
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(parts)


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """The inverse of :func:`compact_ranges`; unparsable parts are skipped."""
    out = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            out.append((int(low), int(high or low)))
        except ValueError:
            continue
    return out


def in_ranges(value: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(low <= value <= high for low, high in ranges)


def reward_lineage(after_seq: int, upto: int, new_comparisons: Sequence, caps: UserCaps, excluded_users: int) -> dict:
    """Manifest notes of a reward update trained on comparisons newer than ``after_seq``."""
    newest = max((c.seq for c in new_comparisons), default=upto)
    return {
        "feedback_source": "trainer ledger (rlhf.feedback.v1)",
        "feedback_seq_from": str(after_seq + 1),
        "feedback_seq_to": str(max(newest, after_seq + 1)),
        "new_comparisons": str(len(new_comparisons)),
        "user_caps": caps.describe(),
        "excluded_users": str(excluded_users),
    }


@dataclass
class CandidateLineage:
    """What one policy candidate has trained on, accumulated over its rounds."""

    parent_version: str = ""  # the policy version its weights descend from
    rounds: list[int] = field(default_factory=list)
    feedback_seq_to: int = 0
    correction_seqs: list[int] = field(default_factory=list)
    reward_versions: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, data: dict) -> CandidateLineage:
        try:
            return cls(**data)
        except TypeError:
            return cls()  # written by another version of the trainer: start afresh

    def add_step(
        self, parent_version: str, round_number: int, seq_to: int, correction_seqs: Sequence[int], reward_version: str
    ) -> dict:
        """Record one PPO step's data; returns the new state as a dict (for Progress).
        A step of a candidate of another parent starts a new lineage."""
        line = self if parent_version == self.parent_version else CandidateLineage(parent_version=parent_version)
        if round_number not in line.rounds:
            line.rounds.append(round_number)
        line.feedback_seq_to = max(line.feedback_seq_to, seq_to)
        line.correction_seqs = sorted(set(line.correction_seqs) | set(correction_seqs))
        if reward_version not in line.reward_versions:
            line.reward_versions.append(reward_version)
        return asdict(line)

    def notes(self, gate_reward_version: str, caps: UserCaps) -> dict[str, str]:
        rounds = f"{min(self.rounds)}-{max(self.rounds)}" if self.rounds else ""
        return {
            "reward_version": gate_reward_version,
            "reward_versions": ",".join(self.reward_versions),
            "corrections_seqs": compact_ranges(self.correction_seqs),
            "corrections_used": str(len(self.correction_seqs)),
            "feedback_seq_to": str(self.feedback_seq_to),
            "rounds": rounds,
            "user_caps": caps.describe(),
        }


@dataclass(frozen=True)
class Shaped:
    """A version a user's feedback went into, and how."""

    kind: str
    version: str
    how: str


def base_note(manifest) -> str:
    """ " (a LoRA adapter on vN)" for an adapter version's manifest, "" for full weights."""
    return f" (a LoRA adapter on {manifest.base_version})" if getattr(manifest, "base_version", "") else ""


def versions_shaped_by(store, user_feedback: Sequence[tuple[int, str, str]]) -> list[Shaped]:
    """Versions whose recorded training ranges include any of ``user_feedback``
    ((seq, kind, feedback_id) rows of one user, FeedbackLedger.user_feedback), and
    policies trained against a reward version that did."""
    out: list[Shaped] = []
    reward_shaped: set[str] = set()
    for version in store.versions("reward"):
        notes = store.manifest("reward", version).notes
        if "feedback_seq_from" not in notes:
            continue
        ranges = parse_ranges(f"{notes['feedback_seq_from']}-{notes.get('feedback_seq_to', '')}")
        hits = [seq for seq, kind, _ in user_feedback if kind in REWARD_KINDS and in_ranges(seq, ranges)]
        if hits:
            reward_shaped.add(version)
            out.append(
                Shaped("reward", version, f"{len(hits)} comparisons/ratings (ledger seq {compact_ranges(hits)})")
            )
    for version in store.versions("policy"):
        manifest = store.manifest("policy", version)
        notes = manifest.notes
        ranges = parse_ranges(notes.get("corrections_seqs", ""))
        hits = [seq for seq, kind, _ in user_feedback if kind == "correction" and in_ranges(seq, ranges)]
        scored_by = set(notes.get("reward_versions", "").split(",")) | {notes.get("reward_version", "")}
        via = sorted(scored_by & reward_shaped)
        how = []
        if hits:
            how.append(f"{len(hits)} corrections (ledger seq {compact_ranges(hits)})")
        if via:
            how.append(f"scored by reward {', '.join(via)}, which the user's feedback shaped")
        if how:
            out.append(Shaped("policy", version, "; ".join(how) + base_note(manifest)))
    return out
