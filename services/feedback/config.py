"""Settings of the feedback gateway (flags > RLHF_* env > defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from shared import env
from shared.config import check, setting
from shared.feedback_rules import FeedbackLimits
from shared.service_config import ServiceConfig


@dataclass(frozen=True)
class FeedbackConfig(ServiceConfig):
    """Feedback gateway: validates feedback and produces it to rlhf.feedback.v1."""

    port: int = setting(50053, "gRPC port (0 picks a free port)", env=env.PORT)
    metrics_port: int = setting(
        9103, "Prometheus /metrics port (0 picks a free port, -1 disables)", env=env.METRICS_PORT
    )
    max_batch_size: int = setting(
        500, "most feedback events in one SubmitFeedbackBatch", env=env.FEEDBACK_MAX_BATCH_SIZE
    )
    max_comment_chars: int = setting(4_000, "longest comment, in characters", env=env.FEEDBACK_MAX_COMMENT_CHARS)
    max_correction_chars: int = setting(
        16_000, "longest correction response, in characters", env=env.FEEDBACK_MAX_CORRECTION_CHARS
    )
    rate_limit: float = setting(
        5_000.0, "feedback events per second per client (token bucket); 0 disables", env=env.FEEDBACK_RATE_LIMIT
    )
    rate_burst: float = setting(
        10_000.0,
        "token bucket size: events a client may send at once; must be at least --max-batch-size",
        env=env.FEEDBACK_RATE_BURST,
    )
    dedup_ttl_s: float = setting(
        3600.0, "how long the first answer for a feedback_id is remembered", env=env.FEEDBACK_DEDUP_TTL_S
    )
    dedup_capacity: int = setting(
        200_000, "most feedback ids remembered (oldest forgotten first)", env=env.FEEDBACK_DEDUP_CAPACITY
    )
    ack_timeout_s: float = setting(
        10.0, "how long to wait for the broker's acknowledgement before UNAVAILABLE", env=env.FEEDBACK_ACK_TIMEOUT_S
    )
    server: str = setting(
        "aio",
        "gRPC server: 'aio' (asyncio; calls await the broker's acks, no handler thread per call, less CPU per "
        "call) or 'sync' (a thread pool of --max-workers threads, each blocked until its call's ack)",
        env=env.FEEDBACK_SERVER,
        choices=("aio", "sync"),
    )
    linger_ms: int = setting(
        2,
        "how long the gateway's Kafka producer waits to fill a batch before sending; each caller waits as long "
        "for its ack, and the producer makes fewer, larger produce requests (less CPU per event under load)",
        env=env.FEEDBACK_LINGER_MS,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.max_batch_size <= 10_000, "max_batch_size", f"must be in 1..10000, got {self.max_batch_size}")
        check(self.max_comment_chars >= 0, "max_comment_chars", f"must be >= 0, got {self.max_comment_chars}")
        check(self.max_correction_chars >= 1, "max_correction_chars", f"must be >= 1, got {self.max_correction_chars}")
        check(self.rate_limit >= 0, "rate_limit", f"must be >= 0 (0 disables), got {self.rate_limit}")
        check(
            self.rate_limit == 0 or self.rate_burst >= self.max_batch_size,
            "rate_burst",
            f"must be >= --max-batch-size ({self.max_batch_size}) or a full batch could never pass, "
            f"got {self.rate_burst}",
        )
        check(self.dedup_ttl_s > 0, "dedup_ttl_s", f"must be > 0, got {self.dedup_ttl_s}")
        check(self.dedup_capacity >= 1, "dedup_capacity", f"must be >= 1, got {self.dedup_capacity}")
        check(self.server in ("aio", "sync"), "server", f"must be 'aio' or 'sync', got {self.server!r}")
        check(0 <= self.linger_ms <= 1000, "linger_ms", f"must be in 0..1000, got {self.linger_ms}")
        check(self.ack_timeout_s > 0, "ack_timeout_s", f"must be > 0, got {self.ack_timeout_s}")

    @property
    def limits(self) -> FeedbackLimits:
        return FeedbackLimits(
            max_batch_size=self.max_batch_size,
            max_comment_chars=self.max_comment_chars,
            max_correction_chars=self.max_correction_chars,
        )
