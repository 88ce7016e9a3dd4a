"""KTO's own settings (Ethayarajh et al. 2024): the weights of desirable and
undesirable answers and which feedback counts as which. Flags ``--kto-<name>``."""

from __future__ import annotations

from dataclasses import dataclass

from services.trainer.methods.dpo.preference_config import PreferenceConfig
from shared.config import check, setting


@dataclass(frozen=True)
class KTOConfig(PreferenceConfig):
    """KTO on thumbs (ratings) and flags, against the frozen reference (policy v1)."""

    desirable_weight: float = setting(
        1.0, "lambda_D: loss weight of desirable responses (raise it when thumbs down outnumber thumbs up)"
    )
    undesirable_weight: float = setting(1.0, "lambda_U: loss weight of undesirable responses")
    max_examples: int = setting(
        1024, "the most recent rated or flagged responses (by ledger order) trained on; older ones are left out"
    )
    flags_as_undesirable: bool = setting(
        True, "count a flagged response (unsafe, offensive, wrong) as undesirable, like a thumbs down"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.desirable_weight > 0, "desirable_weight", f"must be > 0, got {self.desirable_weight}")
        check(self.undesirable_weight > 0, "undesirable_weight", f"must be > 0, got {self.undesirable_weight}")
        check(self.max_examples >= 1, "max_examples", f"must be >= 1, got {self.max_examples}")
