"""Settings of the reward service (flags > RLHF_* env > defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from services.reward.scorer import BACKENDS, RewardLimits
from shared import env
from shared.config import check, setting
from shared.service_config import ServiceConfig


@dataclass(frozen=True)
class RewardConfig(ServiceConfig):
    """Reward service: scores (prompt, response) pairs with the current reward version."""

    port: int = setting(50052, "gRPC port (0 picks a free port)", env=env.PORT)
    metrics_port: int = setting(
        9102, "Prometheus /metrics port (0 picks a free port, -1 disables)", env=env.METRICS_PORT
    )
    backend: str = setting(
        "onnx",
        "onnx: ONNX Runtime (model.onnx, exported on load if missing); torch: eager PyTorch",
        env=env.REWARD_BACKEND,
        choices=BACKENDS,
    )
    threads: int = setting(
        2, "intra-op threads for one batch (about the CPU cores given to the pod)", env=env.REWARD_THREADS
    )
    max_batch_size: int = setting(64, "most pairs in one ScoreBatch", env=env.REWARD_MAX_BATCH_SIZE)
    max_prompt_chars: int = setting(4_000, "longest prompt, in characters", env=env.REWARD_MAX_PROMPT_CHARS)
    max_response_chars: int = setting(8_000, "longest response, in characters", env=env.REWARD_MAX_RESPONSE_CHARS)
    watch_updates: bool = setting(
        True, "follow rlhf.model-updates.v1 and hot-swap to each new reward version", env=env.REWARD_WATCH_UPDATES
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.backend in BACKENDS, "backend", f"must be one of {BACKENDS}, got {self.backend!r}")
        check(1 <= self.threads <= 256, "threads", f"must be in 1..256, got {self.threads}")
        check(1 <= self.max_batch_size <= 4096, "max_batch_size", f"must be in 1..4096, got {self.max_batch_size}")
        check(self.max_prompt_chars >= 1, "max_prompt_chars", f"must be >= 1, got {self.max_prompt_chars}")
        check(self.max_response_chars >= 1, "max_response_chars", f"must be >= 1, got {self.max_response_chars}")

    @property
    def limits(self) -> RewardLimits:
        return RewardLimits(self.max_batch_size, self.max_prompt_chars, self.max_response_chars)
