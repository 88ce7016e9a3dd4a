"""What DPO and KTO share beyond the base: the length of the judged answers trained on.

Defaults: the learning rate is larger than the papers' 5e-7..5e-6 because the
models here are tiny and a live round is a handful of steps; it is not tuned.
``kl_coef`` is both papers' beta (0.1, Rafailov et al. 2023; Ethayarajh et al.
2024); ``--dpo-beta``/``--kto-beta`` are its deprecated names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from services.trainer.methods.base_config import MethodConfig, method_defaults
from shared.config import Renamed, check, setting


@dataclass(frozen=True)
@method_defaults(epochs=1, learning_rate=5e-5)
class PreferenceConfig(MethodConfig):
    """Learning from judged answers: no sampling; a step trains on ``batch_size`` examples."""

    renamed: ClassVar[tuple[Renamed, ...]] = (Renamed("beta", "kl_coef"),)

    max_response_length: int = setting(64, "response tokens kept, EOS included (from the right: the start is kept)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.kl_coef > 0, "kl_coef", f"must be > 0 (the loss's beta), got {self.kl_coef}")
        check(
            self.max_response_length >= 2,
            "max_response_length",
            f"must be >= 2 (a token and EOS), got {self.max_response_length}",
        )

    @property
    def response_length(self) -> int:
        return self.max_response_length
