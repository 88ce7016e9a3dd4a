"""Per-user caps on training data: one user flooding feedback must not steer the models.

Two limits, applied whenever a training set is built from the ledger (the rows
themselves stay in the ledger, for audit and lineage):

1. **A limit per user per window.** Of one user's feedback received by the
   trainer in one window of ``window_s`` seconds (fixed windows of the
   trainer's receipt time, which a client cannot set), only the first
   ``max_per_window`` rows count; the rest are in the ledger but in no
   training set. Counted over every kind of feedback together.
2. **A share cap.** Within one training set (the comparisons of a reward
   update, its held-out pairs, the corrections of a PPO round), no user's
   items weigh more than ``max_share`` of the set's total weight: the
   heaviest users' items are weighted down, all by the same cap ("water
   filling"), until each weighs at most that share. Users under the cap keep
   weight 1. With fewer than 1/``max_share`` users the share cannot be
   enforced (someone must carry more than it); then no share cap applies
   and the per-window limit is the only bound.

Feedback without a user_id is one anonymous contributor for the share cap and
is not limited per window (there is no one to limit); a deployment that wants
these caps to bind every caller has the gateway stamp user ids from the
caller's credentials. A user is who the ledger's user_id says: caps per user
are caps per token once the gateway binds the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class UserCaps:
    """Settings of both limits (TrainerConfig: --user-max-share, --user-window-s, --user-max-per-window)."""

    max_share: float = 0.1  # >= 1 disables the share cap
    window_s: float = 3600.0
    max_per_window: int = 1000  # 0 disables the per-window limit

    def __post_init__(self) -> None:
        if not self.max_share > 0:
            raise ValueError(f"max_share must be > 0, got {self.max_share}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")
        if self.max_per_window < 0:
            raise ValueError(f"max_per_window must be >= 0, got {self.max_per_window}")

    def describe(self) -> str:
        """In words, for manifests and logs."""
        share = "no share cap" if self.max_share >= 1 else f"each user at most {self.max_share:g} of a training set"
        window = (
            "no per-user window limit"
            if self.max_per_window == 0
            else f"at most {self.max_per_window} feedback events per user per {self.window_s:g} s"
        )
        return f"{share}; {window}"


NO_CAPS = UserCaps(max_share=1.0, max_per_window=0)


def share_cap(counts: Mapping[str, float], max_share: float) -> float | None:
    """The weight ``c`` each user's total is capped at so that no user exceeds
    ``max_share`` of the total (users over ``c`` are scaled down to ``c``), or
    None when no cap is needed or none is possible (too few users)."""
    if max_share >= 1 or not counts:
        return None
    heavy_first = sorted((n for n in counts.values() if n > 0), reverse=True)
    total = sum(heavy_first)
    if total <= 0 or heavy_first[0] <= max_share * total:
        return None
    for capped in range(1, len(heavy_first)):
        if 1 - max_share * capped <= 0:
            break
        rest = sum(heavy_first[capped:])
        cap = max_share * rest / (1 - max_share * capped)
        if heavy_first[capped] <= cap <= heavy_first[capped - 1]:
            return cap
    return None


def share_factors(counts: Mapping[str, float], max_share: float) -> dict[str, float]:
    """Per user, the factor (0, 1] their items are weighted by under :func:`share_cap`."""
    cap = share_cap(counts, max_share)
    if cap is None:
        return {user: 1.0 for user in counts}
    return {user: (min(1.0, cap / n) if n > 0 else 1.0) for user, n in counts.items()}
