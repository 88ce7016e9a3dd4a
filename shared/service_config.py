"""Settings every gRPC service has (:class:`ServiceConfig`): address, ports, Kafka, TLS, tokens, shutdown.

Each service's own config subclasses it (services/<name>/config.py); the
machinery that turns a config dataclass into flags and env lives in
:mod:`shared.config`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from shared import env
from shared.config import ConfigError, check, setting

KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Apache Kafka's own consumer defaults (Java client since 3.0, KIP-735; also
# kafka-python 3's), inside what its brokers accept by default:
# group.min.session.timeout.ms 6000 <= session <= group.max.session.timeout.ms 1800000.
KAFKA_SESSION_TIMEOUT_MS = 45_000
KAFKA_HEARTBEAT_INTERVAL_MS = 3_000
KAFKA_MAX_POLL_INTERVAL_MS = 300_000


@dataclass(frozen=True)
class ServiceConfig:
    """Settings every gRPC service has."""

    host: str = setting(
        "127.0.0.1",
        "address the gRPC (and, unless --metrics-host, the metrics) server binds; 0.0.0.0 for every interface "
        "(containers, Kubernetes)",
        env=env.HOST,
    )
    port: int = setting(50050, "gRPC port (0 picks a free port)", env=env.PORT)
    metrics_port: int = setting(
        9100, "Prometheus /metrics port (0 picks a free port, -1 disables)", env=env.METRICS_PORT
    )
    kafka: str = setting("127.0.0.1:9092", "Kafka bootstrap servers, comma separated", env=env.KAFKA)
    kafka_security_protocol: str = setting(
        "PLAINTEXT",
        "Kafka security protocol",
        env=env.KAFKA_SECURITY_PROTOCOL,
        choices=KAFKA_SECURITY_PROTOCOLS,
    )
    kafka_ssl_cafile: str = setting(
        "", "CA certificate (PEM) that signed the brokers' certificates", env=env.KAFKA_SSL_CAFILE
    )
    kafka_ssl_certfile: str = setting(
        "", "client certificate (PEM) for TLS client authentication (mutual TLS)", env=env.KAFKA_SSL_CERTFILE
    )
    kafka_ssl_keyfile: str = setting("", "private key (PEM) of --kafka-ssl-certfile", env=env.KAFKA_SSL_KEYFILE)
    kafka_sasl_mechanism: str = setting(
        "", "SASL mechanism (Strimzi's KafkaUser: SCRAM-SHA-512)", env=env.KAFKA_SASL_MECHANISM, choices=SASL_MECHANISMS
    )
    kafka_sasl_username: str = setting("", "SASL user name", env=env.KAFKA_SASL_USERNAME)
    kafka_sasl_password: str = setting("", "SASL password", env=env.KAFKA_SASL_PASSWORD)
    kafka_session_timeout_ms: int = setting(
        KAFKA_SESSION_TIMEOUT_MS,
        "consumer group session timeout; Apache Kafka accepts 6000..1800000 by default "
        "(group.min/max.session.timeout.ms); the embedded broker joins faster with less",
        env=env.KAFKA_SESSION_TIMEOUT_MS,
    )
    kafka_heartbeat_interval_ms: int = setting(
        KAFKA_HEARTBEAT_INTERVAL_MS,
        "consumer heartbeat interval; at most a third of the session timeout",
        env=env.KAFKA_HEARTBEAT_INTERVAL_MS,
    )
    kafka_max_poll_interval_ms: int = setting(
        KAFKA_MAX_POLL_INTERVAL_MS,
        "longest a consumer may spend handling one polled batch before the group drops it",
        env=env.KAFKA_MAX_POLL_INTERVAL_MS,
    )
    model_store: str = setting("./model-store", "model store root directory", env=env.MODEL_STORE)
    auth_token: str = setting("", "bearer token clients must send; empty disables auth", env=env.AUTH_TOKEN)
    max_message_bytes: int = setting(
        4 * 1024 * 1024, "largest gRPC message accepted or sent", env=env.MAX_MESSAGE_BYTES
    )
    grace_period_s: float = setting(
        20.0,
        "on SIGTERM, how long in-flight calls may finish; keep it below Kubernetes' "
        "terminationGracePeriodSeconds (30 s by default)",
        env=env.GRACE_PERIOD_S,
    )
    drain_delay_s: float = setting(
        0.0,
        "on SIGTERM, report NOT_SERVING and keep accepting calls this long so load "
        "balancers stop routing here first (a few seconds on Kubernetes)",
        env=env.DRAIN_DELAY_S,
    )
    max_workers: int = setting(64, "gRPC handler threads (bounds concurrent calls)", env=env.MAX_WORKERS)
    max_connection_age_s: float = setting(
        0.0,
        "close each client connection after this long (0: never) so clients reconnect and re-resolve: "
        "replicas added behind a headless Service then get traffic; in-flight calls get the grace period",
        env=env.MAX_CONNECTION_AGE_S,
    )
    log_level: str = setting("INFO", "log level", env=env.LOG_LEVEL, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = setting("json", "log format", env=env.LOG_FORMAT, choices=("json", "text"))

    # --- security (docs/SECURITY.md): TLS, token roles, where metrics listen -----------------
    tls_cert: str = setting("", "server certificate chain (PEM); with --tls-key turns TLS on", env=env.TLS_CERT)
    tls_key: str = setting("", "server private key (PEM)", env=env.TLS_KEY)
    tls_client_ca: str = setting(
        "", "CA (PEM) for mutual TLS: when set, clients must present a certificate it signed", env=env.TLS_CLIENT_CA
    )
    tls_ca: str = setting(
        "",
        "as a client of other services: the CA (PEM) that signed their certificates, or 'system' for the "
        "system's trust store; empty = plaintext",
        env=env.TLS_CA,
    )
    tls_client_cert: str = setting(
        "", "as a client: certificate (PEM) to present to servers that require mutual TLS", env=env.TLS_CLIENT_CERT
    )
    tls_client_key: str = setting("", "as a client: private key (PEM) of --tls-client-cert", env=env.TLS_CLIENT_KEY)
    tls_server_name: str = setting(
        "", "as a client: the name servers' certificates carry, if not the host dialled", env=env.TLS_SERVER_NAME
    )
    operator_token: str = setting(
        "",
        "bearer token of the operator role (may also Promote, Rollback, Pause, Resume); --auth-token is the "
        "application role",
        env=env.OPERATOR_TOKEN,
    )
    tokens_file: str = setting(
        "",
        "JSON file of more tokens: {sha256 hex of the token: {role: application|operator, subject: optional id}}",
        env=env.TOKENS_FILE,
    )
    metrics_host: str = setting("", "address the metrics server binds (empty: --host)", env=env.METRICS_HOST)
    health_port: int = setting(
        -1,
        "a plaintext port serving only grpc.health.v1.Health, for probes that cannot speak TLS (Kubernetes' "
        "native gRPC probes); -1 disables, 0 picks a free port",
        env=env.HEALTH_PORT,
    )

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "port", f"must be in 0..65535, got {self.port}")
        check(-1 <= self.metrics_port <= 65535, "metrics_port", f"must be in -1..65535, got {self.metrics_port}")
        check(bool(self.kafka.strip()), "kafka", "must name at least one bootstrap server, e.g. 127.0.0.1:9092")
        check(self.max_message_bytes >= 1024, "max_message_bytes", f"must be >= 1024, got {self.max_message_bytes}")
        check(self.grace_period_s >= 0, "grace_period_s", f"must be >= 0, got {self.grace_period_s}")
        check(self.drain_delay_s >= 0, "drain_delay_s", f"must be >= 0, got {self.drain_delay_s}")
        check(self.max_workers >= 1, "max_workers", f"must be >= 1, got {self.max_workers}")
        check(self.max_connection_age_s >= 0, "max_connection_age_s", f"must be >= 0, got {self.max_connection_age_s}")
        self._check_kafka_security()
        self._check_kafka_group_timing()
        _check_security(self)

    def _check_kafka_security(self) -> None:
        sasl = "SASL" in self.kafka_security_protocol
        check(
            not self.kafka_sasl_mechanism or sasl,
            "kafka_sasl_mechanism",
            "needs --kafka-security-protocol SASL_SSL or SASL_PLAINTEXT",
        )
        check(
            not sasl or bool(self.kafka_sasl_mechanism),
            "kafka_sasl_mechanism",
            f"--kafka-security-protocol {self.kafka_security_protocol} needs a mechanism, e.g. SCRAM-SHA-512",
        )
        check(
            not self.kafka_sasl_mechanism or bool(self.kafka_sasl_username and self.kafka_sasl_password),
            "kafka_sasl_username",
            f"SASL {self.kafka_sasl_mechanism} needs --kafka-sasl-username and --kafka-sasl-password",
        )
        check(
            bool(self.kafka_ssl_certfile) == bool(self.kafka_ssl_keyfile),
            "kafka_ssl_certfile",
            "give both --kafka-ssl-certfile and --kafka-ssl-keyfile, or neither",
        )
        check(
            not (self.kafka_ssl_cafile or self.kafka_ssl_certfile) or self.kafka_security_protocol.endswith("SSL"),
            "kafka_security_protocol",
            f"TLS files are set but the protocol is {self.kafka_security_protocol}; use SSL or SASL_SSL",
        )

    def _check_kafka_group_timing(self) -> None:
        session, heartbeat = self.kafka_session_timeout_ms, self.kafka_heartbeat_interval_ms
        check(session >= 1, "kafka_session_timeout_ms", f"must be >= 1, got {session}")
        check(
            1 <= heartbeat and heartbeat * 3 <= session,
            "kafka_heartbeat_interval_ms",
            f"must be between 1 and a third of --kafka-session-timeout-ms ({session}), got {heartbeat}",
        )
        check(
            self.kafka_max_poll_interval_ms >= 1,
            "kafka_max_poll_interval_ms",
            f"must be >= 1, got {self.kafka_max_poll_interval_ms}",
        )

    def kafka_client_options(self) -> dict[str, Any]:
        """Security options for every kafka-python client this service makes."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_ssl_cafile:
            options["ssl_cafile"] = self.kafka_ssl_cafile
        if self.kafka_ssl_certfile:
            options.update(ssl_certfile=self.kafka_ssl_certfile, ssl_keyfile=self.kafka_ssl_keyfile)
        if self.kafka_sasl_mechanism:
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password,
            )
        return options

    def kafka_consumer_options(self) -> dict[str, Any]:
        """What every consumer this service makes gets: the security options and the group timing."""
        return {
            **self.kafka_client_options(),
            "session_timeout_ms": self.kafka_session_timeout_ms,
            "heartbeat_interval_ms": self.kafka_heartbeat_interval_ms,
            "max_poll_interval_ms": self.kafka_max_poll_interval_ms,
        }

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or self.host


def _check_security(config: ServiceConfig) -> None:
    """TLS files come in pairs and exist; tokens are distinct; the tokens file parses."""
    check(-1 <= config.health_port <= 65535, "health_port", f"must be in -1..65535, got {config.health_port}")
    check(bool(config.tls_cert) == bool(config.tls_key), "tls_key", "--tls-cert and --tls-key go together")
    check(not config.tls_client_ca or bool(config.tls_cert), "tls_client_ca", "mutual TLS needs --tls-cert/--tls-key")
    check(
        bool(config.tls_client_cert) == bool(config.tls_client_key),
        "tls_client_key",
        "--tls-client-cert and --tls-client-key go together",
    )
    check(
        not config.tls_client_cert or bool(config.tls_ca),
        "tls_ca",
        "a client certificate needs --tls-ca (the CA of the servers' certificates, or 'system')",
    )
    files = ["tls_cert", "tls_key", "tls_client_ca", "tls_client_cert", "tls_client_key", "tokens_file"]
    for name in [*files, *(["tls_ca"] if config.tls_ca != "system" else [])]:
        path = getattr(config, name)
        check(not path or os.path.isfile(path), name, f"no such file: {path}")
    check(
        not config.operator_token or config.operator_token != config.auth_token,
        "operator_token",
        "must differ from --auth-token (one token cannot have both roles)",
    )
    if config.tokens_file:
        from shared.grpc.auth import TokenFileError, read_tokens_file  # lazy: shared.grpc.auth imports this module

        try:
            read_tokens_file(config.tokens_file)
        except TokenFileError as exc:
            raise ConfigError(f"--tokens-file: {exc}") from None
