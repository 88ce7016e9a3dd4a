"""Settings of the OpenAI-compatible front door (flags > RLHF_* env > defaults).

Not a ServiceConfig subclass: the front door speaks HTTP and holds no Kafka
client or model store, so the Kafka and store flags would only mislead in
``--help``. The settings it shares with every service keep their names and
variables (RLHF_HOST, RLHF_PORT, RLHF_AUTH_TOKEN, RLHF_GRACE_PERIOD_S, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import env
from shared.config import check, setting


def _is_address(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit()


@dataclass(frozen=True)
class OpenAIApiConfig:
    """OpenAI-compatible HTTP front door (/v1/chat/completions, /v1/completions, /v1/models, /v1/feedback)."""

    host: str = setting(
        "127.0.0.1", "address the HTTP server binds (0.0.0.0 for every interface, e.g. in a container)", env=env.HOST
    )
    port: int = setting(8000, "HTTP port (0 picks a free port)", env=env.PORT)
    metrics_port: int = setting(
        9105, "Prometheus /metrics port (0 picks a free port, -1 disables)", env=env.METRICS_PORT
    )
    policy_addr: str = setting("127.0.0.1:50051", "policy service gRPC address (host:port)", env=env.POLICY_ADDR)
    feedback_addr: str = setting("127.0.0.1:50053", "feedback gateway gRPC address (host:port)", env=env.FEEDBACK_ADDR)
    # How this front door reaches the gRPC services over TLS: the same variables as every
    # service's client side (shared.grpc.tls.client_tls_from_env reads them for the CLI).
    tls_ca: str = setting("", "CA (PEM) of the gRPC services' certificates, or 'system'; turns TLS on", env=env.TLS_CA)
    tls_client_cert: str = setting(
        "", "certificate (PEM) to present where the services require mutual TLS", env=env.TLS_CLIENT_CERT
    )
    tls_client_key: str = setting("", "private key (PEM) of --tls-client-cert", env=env.TLS_CLIENT_KEY)
    tls_server_name: str = setting(
        "", "name in the services' certificates, if not the host dialled", env=env.TLS_SERVER_NAME
    )
    model_id: str = setting(
        "rlhf-policy",
        "the model name clients send as `model` and GET /v1/models lists",
        env=env.OPENAI_MODEL_ID,
    )
    auth_token: str = setting(
        "",
        "bearer token clients must send (Authorization: Bearer <token>); empty disables the check here. "
        "The client's Authorization header is passed on to the gRPC services either way",
        env=env.AUTH_TOKEN,
    )
    max_request_bytes: int = setting(
        4 * 1024 * 1024, "largest HTTP request body accepted (413 beyond it)", env=env.OPENAI_MAX_REQUEST_BYTES
    )
    upstream_timeout_s: float = setting(
        300.0, "deadline of each gRPC call to the policy or feedback service", env=env.OPENAI_UPSTREAM_TIMEOUT_S
    )
    idle_timeout_s: float = setting(
        60.0,
        "how long a keep-alive connection may sit idle (or a client stall mid-request) before it is closed",
        env=env.OPENAI_IDLE_TIMEOUT_S,
    )
    max_workers: int = setting(
        64, "requests handled at once; beyond it a request gets 429 with Retry-After", env=env.MAX_WORKERS
    )
    grace_period_s: float = setting(
        20.0,
        "on SIGTERM, how long in-flight requests (streams included) may finish; keep it below Kubernetes' "
        "terminationGracePeriodSeconds (30 s by default)",
        env=env.GRACE_PERIOD_S,
    )
    drain_delay_s: float = setting(
        0.0,
        "on SIGTERM, answer /health with 503 and keep serving this long so load balancers stop routing here first",
        env=env.DRAIN_DELAY_S,
    )
    log_level: str = setting("INFO", "log level", env=env.LOG_LEVEL, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = setting("json", "log format", env=env.LOG_FORMAT, choices=("json", "text"))

    @property
    def metrics_bind_host(self) -> str:
        """/metrics follows --host, as a ServiceConfig's does without --metrics-host (shared.service_main)."""
        return self.host

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "port", f"must be in 0..65535, got {self.port}")
        check(-1 <= self.metrics_port <= 65535, "metrics_port", f"must be in -1..65535, got {self.metrics_port}")
        for name in ("policy_addr", "feedback_addr"):
            value = getattr(self, name)
            check(_is_address(value), name, f"must be host:port, e.g. 127.0.0.1:50051, got {value!r}")
        check(
            bool(self.model_id.strip()) and self.model_id == self.model_id.strip(),
            "model_id",
            f"must be a non-empty name without surrounding spaces, got {self.model_id!r}",
        )
        check(self.max_request_bytes >= 1024, "max_request_bytes", f"must be >= 1024, got {self.max_request_bytes}")
        check(self.upstream_timeout_s > 0, "upstream_timeout_s", f"must be > 0, got {self.upstream_timeout_s}")
        check(self.idle_timeout_s > 0, "idle_timeout_s", f"must be > 0, got {self.idle_timeout_s}")
        check(self.max_workers >= 1, "max_workers", f"must be >= 1, got {self.max_workers}")
        check(self.grace_period_s >= 0, "grace_period_s", f"must be >= 0, got {self.grace_period_s}")
        check(self.drain_delay_s >= 0, "drain_delay_s", f"must be >= 0, got {self.drain_delay_s}")
