"""Service configuration: a frozen dataclass built once from flags and env.

Every field is declared with :func:`setting` (a default, help text and the
environment variable from :mod:`shared.env`). :func:`load_config` turns the
dataclass into an argparse parser, so ``python -m services.X --help`` lists
every setting with its variable, and precedence is flag > env > default.
Validation lives in each config's ``__post_init__`` and raises ConfigError
with a message that names the setting and what to change.

A renamed setting keeps its old flag and variable for one release: the config
class lists it once in ``renamed`` (:class:`Renamed`, old name -> new name),
and :func:`load_config` accepts the old spelling with a logged deprecation
warning (the new one wins when both are given).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from shared import env

C = TypeVar("C")
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def setting(default: Any, help: str, *, env: str | None = None, choices: Sequence[Any] | None = None) -> Any:
    """Declare a config field: its default, help text and environment variable."""
    return dataclasses.field(default=default, metadata={"help": help, "env": env, "choices": choices})


def nested(cls: type, *, env_prefix: str, exclude: Sequence[str] = ()) -> Any:
    """Compose another settings dataclass as one field (e.g. TrainerConfig.ppo:
    PPOConfig). Its fields become flags ``--<field>-<name>`` and variables
    ``<env_prefix><NAME>``, with the nested class's own defaults and help: each
    setting is declared once, where it belongs. ``exclude`` names fields the
    outer config sets itself (they keep their default here)."""
    return dataclasses.field(
        default_factory=cls, metadata={"nested": cls, "env_prefix": env_prefix, "exclude": tuple(exclude)}
    )


@dataclass(frozen=True)
class Renamed:
    """A setting renamed in this release: its old flag and variable still work, with a warning.

    Declared once, in the config class's ``renamed: ClassVar[tuple[Renamed, ...]]``. The old
    flag is ``--<old>`` under the same prefix as the new one (``--ppo-ppo-epochs`` for
    TrainerConfig.ppo's ``ppo_epochs``); the old variable is ``env`` when the setting has a
    variable of its own (shared.env), else derived from the nested config's prefix."""

    old: str
    new: str
    env: str | None = None


def renamed_settings(cls: type) -> tuple[Renamed, ...]:
    """The renames ``cls`` (and its bases) declare."""
    return tuple(getattr(cls, "renamed", ()))


def upgrade_renamed(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (field name -> value, e.g. a saved config) with old names moved to their
    new ones, for reading what an older release wrote."""
    out = dict(values)
    for rename in renamed_settings(cls):
        if rename.old in out:
            old = out.pop(rename.old)
            out.setdefault(rename.new, old)
    return out


def check(condition: bool, name: str, message: str) -> None:
    """Raise ConfigError naming the flag and its variable unless ``condition``."""
    if not condition:
        raise ConfigError(f"--{name.replace('_', '-')}: {message}")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _converter(tp: Any):
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    raise TypeError(f"unsupported config field type {tp!r}")


def _flag_fields(cls: type, prefix: str = "", env_prefix: str | None = None, exclude: Sequence[str] = ()):
    """(dest, field, type, env var) for every flag of ``cls``, nested configs flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        inner = f.metadata.get("nested")
        if inner is not None:
            yield from _flag_fields(inner, f"{prefix}{f.name}_", f.metadata["env_prefix"], f.metadata["exclude"])
            continue
        var = f.metadata.get("env") or (f"{env_prefix}{f.name.upper()}" if env_prefix else None)
        yield prefix + f.name, f, hints[f.name], var


def _renamed_flags(cls: type, prefix: str = "", env_prefix: str | None = None):
    """(old dest, new dest, old env var) of every renamed setting of ``cls``, nested configs included."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for rename in renamed_settings(cls):
        new = fields[rename.new]
        var = rename.env or (
            f"{env_prefix}{rename.old.upper()}" if env_prefix and not new.metadata.get("env") else None
        )
        yield prefix + rename.old, prefix + rename.new, var
    for f in fields.values():
        inner = f.metadata.get("nested")
        if inner is not None:
            yield from _renamed_flags(inner, f"{prefix}{f.name}_", f.metadata["env_prefix"])


def _deprecated_dest(old_dest: str) -> str:
    return f"deprecated__{old_dest}"


def _build(cls: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """``cls`` from flat ``values`` (dest -> value); a nested config's refusal names the outer flag."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        inner = f.metadata.get("nested")
        if inner is not None:
            sub = f"{prefix}{f.name}_"
            try:
                kwargs[f.name] = _build(inner, {k: v for k, v in values.items() if k.startswith(sub)}, sub)
            except ConfigError as exc:
                flag, _, message = str(exc).partition(": ")
                raise ConfigError(f"--{sub.replace('_', '-')}{flag.removeprefix('--')}: {message}") from None
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


def config_parser(
    cls: type, prog: str | None = None
) -> tuple[argparse.ArgumentParser, list[tuple[str, Any, Any, str | None]]]:
    """The argparse parser of ``cls``'s flags (what ``--help`` prints) and the (dest, field,
    type, env var) of each flag."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None,
    )
    flags = list(_flag_fields(cls))
    for dest, f, tp, var in flags:
        meta = f.metadata
        # The parser's own default stays None so "not given" can fall back to
        # the environment; the help shows the field's real default instead.
        help_text = meta.get("help", "") + f" (default: {f.default!r})"
        if var:
            help_text += f" [env {var}]"
        # argparse %-formats help texts: a literal % ("95%") must reach it as %%.
        help_text = help_text.replace("%", "%%")
        flag = "--" + dest.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, dest=dest, type=_parse_bool, nargs="?", const=True, default=None, help=help_text)
        else:
            parser.add_argument(
                flag, dest=dest, type=_converter(tp), default=None, choices=meta.get("choices"), help=help_text
            )
    types = {dest: (f, tp) for dest, f, tp, _ in flags}
    for old, new, _ in _renamed_flags(cls):
        if new not in types:
            continue  # the new setting is set by the outer config (nested exclude): so is the old
        f, tp = types[new]
        flag, kind = "--" + old.replace("_", "-"), _parse_bool if tp is bool else _converter(tp)
        extra: dict[str, Any] = {"nargs": "?", "const": True} if tp is bool else {"choices": f.metadata.get("choices")}
        # Hidden from --help: the new flag is the one to learn.
        parser.add_argument(flag, dest=_deprecated_dest(old), type=kind, default=None, help=argparse.SUPPRESS, **extra)
    return parser, flags


def load_config(cls: type[C], argv: Sequence[str] | None = None, *, prog: str | None = None) -> C:
    """Build ``cls`` from command-line flags, then RLHF_* env, then defaults."""
    parser, flags = config_parser(cls, prog)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for dest, _, tp, var in flags:
        from_flag = getattr(args, dest)
        if from_flag is not None:
            values[dest] = from_flag
        elif var and var in os.environ:
            try:
                values[dest] = _converter(tp)(os.environ[var])
            except ValueError as exc:
                raise ConfigError(f"{var}={os.environ[var]!r}: {exc}") from exc
    types = {dest: (tp, var) for dest, _, tp, var in flags}
    for old, new, old_var in _renamed_flags(cls):
        if new not in types:
            continue  # set by the outer config (a nested exclude)
        _apply_renamed(values, args, old, new, old_var, *types[new])
    config: C = _build(cls, values)
    return config


def _apply_renamed(
    values: dict[str, Any], args: argparse.Namespace, old: str, new: str, var: str | None, tp: Any, new_var: str | None
) -> None:
    """Take a renamed setting's value from its old flag or variable (with a warning) unless the new one is set."""
    new_flag, old_flag = "--" + new.replace("_", "-"), "--" + old.replace("_", "-")
    sources: list[tuple[str, str, Any]] = []  # (old spelling, its replacement, value)
    from_flag = getattr(args, _deprecated_dest(old), None)
    if from_flag is not None:
        sources.append((old_flag, new_flag, from_flag))
    if var and var in os.environ:
        try:
            sources.append((var, new_var or new_flag, _converter(tp)(os.environ[var])))
        except ValueError as exc:
            raise ConfigError(f"{var}={os.environ[var]!r}: {exc}") from exc
    if not sources:
        return
    used, replacement, value = sources[0]
    if new in values:
        log.warning(
            f"{used} is deprecated and ignored: {replacement} is set",
            extra={"deprecated": used, "replacement": replacement},
        )
        return
    values[new] = value
    log.warning(
        f"{used} is deprecated (renamed {replacement}); it is still read in this release",
        extra={"deprecated": used, "replacement": replacement},
    )


def config_summary(config: Any) -> dict[str, Any]:
    """Fields for the start-up log line, with secrets masked."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("nested") is not None:
            out.update({f"{f.name}_{k}": v for k, v in config_summary(value).items()})
            continue
        if "token" in f.name or "password" in f.name or "secret" in f.name:
            value = "***" if value else ""
        out[f.name] = value
    return out


def log_config(config: Any, logger: logging.Logger) -> None:
    logger.info("config", extra={"fields": config_summary(config)})


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
