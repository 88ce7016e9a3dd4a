"""The gate's held-out set, drawn from real traffic.

A prompt is held out when a hash of its folded text falls in one slice of
``one_in``: deterministic, so every restart, every replica of the trainer and
every later round agrees on it without storing a list, and stable as traffic
grows (a held-out prompt never becomes a training prompt). Comparisons and
corrections follow their prompt, so nothing the gate or the reward-accuracy
check looks at is ever trained on.

Nothing here knows an application's prompt format: the key is the prompt
text itself, case- and whitespace-folded.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def prompt_key(prompt: str) -> str:
    """The prompt, case- and whitespace-folded: one key however it was spaced."""
    return " ".join(prompt.lower().split())


def _slot(prompt: str, one_in: int) -> int:
    return zlib.crc32(prompt_key(prompt).encode()) % one_in


@dataclass(frozen=True)
class HeldoutSplit:
    """Which prompts the gate keeps for itself: one in ``one_in``, by hash."""

    one_in: int

    def __post_init__(self) -> None:
        if self.one_in < 2:
            raise ValueError(f"one_in must be >= 2 (a held-out slice and something to train on), got {self.one_in}")

    def is_heldout(self, prompt: str) -> bool:
        return _slot(prompt, self.one_in) == 0

    def training(self, prompts: Iterable[str]) -> list[str]:
        return [p for p in prompts if not self.is_heldout(p)]

    def heldout(self, prompts: Iterable[str], limit: int = 0) -> list[str]:
        """Distinct held-out prompts (by key) in a stable order (by hash, then text),
        at most ``limit`` (0 = all): the same prompts in the same order as long
        as no new held-out prompt arrives, so paired evaluations line up."""
        unique: dict[str, str] = {}
        for prompt in prompts:
            if self.is_heldout(prompt):
                unique.setdefault(prompt_key(prompt), prompt)
        ordered = sorted(unique.items(), key=lambda kv: (zlib.crc32(kv[0].encode()), kv[0]))
        chosen = [prompt for _, prompt in ordered]
        return chosen[:limit] if limit else chosen

    def split_pairs(self, items: Sequence, prompt_of) -> tuple[list, list]:
        """(training, held-out) items by their prompt (``prompt_of(item)``)."""
        train, held = [], []
        for item in items:
            (held if self.is_heldout(prompt_of(item)) else train).append(item)
        return train, held


def heldout_report(prompts: int, pairs: int, need_prompts: int, need_pairs: int) -> dict[str, int | str]:
    """GetStatus's held-out sizes against what a promotion needs; ``waiting_for`` says
    in words what is missing (empty when ready)."""
    missing = []
    if prompts < need_prompts:
        missing.append(
            f"{need_prompts - prompts} more held-out prompts from traffic before a policy promotion "
            f"({prompts} of {need_prompts})"
        )
    if pairs < need_pairs:
        missing.append(
            f"{need_pairs - pairs} more held-out comparisons before a reward promotion ({pairs} of {need_pairs})"
        )
    return {
        "gate_prompts": prompts,
        "gate_prompts_required": need_prompts,
        "reward_pairs": pairs,
        "reward_pairs_required": need_pairs,
        "waiting_for": "; ".join(missing),
    }
