"""DPO's own settings (Rafailov et al. 2023): conservative DPO's label smoothing and
how many of the most recent compared pairs it trains on. Flags ``--dpo-<name>``."""

from __future__ import annotations

from dataclasses import dataclass

from services.trainer.methods.dpo.preference_config import PreferenceConfig
from shared.config import check, setting


@dataclass(frozen=True)
class DPOConfig(PreferenceConfig):
    """Online DPO on the pairs users compared, against the frozen reference (policy v1)."""

    label_smoothing: float = setting(
        0.0, "conservative DPO: the probability that a user's choice is flipped noise (0 = plain DPO; < 0.5)"
    )
    max_pairs: int = setting(
        512, "the most recent preference pairs (by ledger order) trained on; older ones are left out (online)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.label_smoothing < 0.5, "label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        check(self.max_pairs >= 1, "max_pairs", f"must be >= 1, got {self.max_pairs}")
