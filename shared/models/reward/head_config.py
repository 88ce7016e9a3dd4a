"""What a saved reward model needs beside its weights: :class:`RewardHeadConfig`, written
to ``reward_config.json`` (with the format) by :func:`write_reward_config`, and the
type both reward model formats share (:data:`ScalarReward`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeAlias

from shared.models.reward.ensemble import DEFAULT_CONSERVATIVE_K

REWARD_CONFIG_FILE = "reward_config.json"
DEFAULT_MAX_LENGTH = 96


@dataclass(frozen=True)
class RewardHeadConfig:
    """What, beyond the encoder config, a saved reward model needs to score."""

    # "mean": over non-padding tokens, as all-MiniLM was trained; "model": the
    # wrapped sequence-classification model pools itself (shared.models.reward.adapter).
    pooling: str = "mean"
    max_length: int = DEFAULT_MAX_LENGTH  # tokens per (prompt, response) pair
    # An application's prompt frame (e.g. "User:" ... "Assistant:"), stripped
    # before scoring so the reward depends on the question, not the framing.
    prompt_prefix: str = ""
    prompt_suffix: str = ""
    # K scalar heads on the one backbone (1: a single head); the score is
    # mean - conservative_k * std over them (shared.models.reward.ensemble).
    ensemble_size: int = 1
    conservative_k: float = DEFAULT_CONSERVATIVE_K

    def __post_init__(self) -> None:
        if not (isinstance(self.ensemble_size, int) and 1 <= self.ensemble_size <= 64):
            raise ValueError(
                f"{REWARD_CONFIG_FILE}: ensemble_size must be an integer in 1..64, got {self.ensemble_size!r}"
            )
        if not 0 <= self.conservative_k <= 100:
            raise ValueError(f"{REWARD_CONFIG_FILE}: conservative_k must be in [0, 100], got {self.conservative_k!r}")

    @property
    def frame(self) -> tuple[str, str]:
        return self.prompt_prefix, self.prompt_suffix


def write_reward_config(path: Path, format_name: str, head_config: RewardHeadConfig) -> None:
    """``reward_config.json``: the format, then the head config's fields."""
    path.write_text(json.dumps({"format": format_name, **asdict(head_config)}, indent=2))


# Either reward model shared.models.reward.format loads (RewardModel, or the adapter in
# shared.models.reward.adapter): forward(input_ids, attention_mask) -> scores [batch],
# plus .head_config and .architecture. Any, because mypy sees nn.Module's
# attributes as Tensor | Module.
ScalarReward: TypeAlias = Any
