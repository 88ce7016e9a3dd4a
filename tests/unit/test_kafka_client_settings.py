"""Every Kafka consumer the platform makes gets settings that real Apache Kafka accepts.

Apache Kafka's broker defaults (docs: "Broker Configs"): a group member's
session timeout must lie in [group.min.session.timeout.ms,
group.max.session.timeout.ms] = [6000, 1800000] or JoinGroup fails with
INVALID_SESSION_TIMEOUT; the client's heartbeat interval must be below the
session timeout (Kafka's guidance: at most a third of it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from services.policy.config import PolicyConfig
from services.reward.config import RewardConfig
from services.trainer.config import TrainerConfig
from services.trainer.data.ingest import FeedbackIngest
from services.trainer.data.ledger import FeedbackLedger
from shared.config import ConfigError
from shared.kafka.consumer import ConsumerSettings, EventConsumerLoop
from shared.kafka.deadletter import DeadLetterProducer
from shared.models.store import ModelStore
from shared.models.update_follower import ModelUpdateFollower
from shared.service_config import ServiceConfig

ROOT = Path(__file__).resolve().parents[2]
GROUP_MIN_SESSION_TIMEOUT_MS = 6_000
GROUP_MAX_SESSION_TIMEOUT_MS = 1_800_000
# The places that build a consumer, as (file, enclosing function, constructor).
# A new one must be added here and below, so its settings are checked too.
CONSUMER_SITES = {
    ("shared/kafka/consumer.py", "_connect", "KafkaConsumer"),
    ("shared/models/update_follower.py", "__init__", "ConsumerSettings"),
    ("services/trainer/data/ingest.py", "consumer_loop", "ConsumerSettings"),
}
# Callers that hand a service's Kafka options to one of those sites.
CONSUMER_FACTORIES = {"ModelUpdateFollower": "kafka_options", "consumer_loop": 1}


def _python_files():
    for top in ("shared", "services", "rlhf_cli"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "proto" not in path.relative_to(ROOT).parts:
                yield path


def _calls(tree: ast.AST):
    """(enclosing function name, call) for every call in ``tree``."""
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Call):
                    yield func.name, node


def _callee(call: ast.Call) -> str:
    return getattr(call.func, "id", None) or getattr(call.func, "attr", "")


def test_the_consumer_sites_are_the_ones_checked_here():
    found = set()
    for path in _python_files():
        for function, call in _calls(ast.parse(path.read_text())):
            if _callee(call) in ("KafkaConsumer", "ConsumerSettings"):
                found.add((str(path.relative_to(ROOT)), function, _callee(call)))
    assert found == CONSUMER_SITES


def test_services_give_their_consumers_the_consumer_options():
    """kafka_client_options() lacks the group timing: a consumer built from it would get the
    defaults, not what the operator configured."""
    checked = 0
    for path in _python_files():
        for _, call in _calls(ast.parse(path.read_text())):
            where = CONSUMER_FACTORIES.get(_callee(call))
            if where is None:
                continue
            arg = (
                next((k.value for k in call.keywords if k.arg == where), None)
                if isinstance(where, str)
                else call.args[where]
            )
            assert isinstance(arg, ast.Call) and _callee(arg) == "kafka_consumer_options", (
                f"{path.relative_to(ROOT)}:{call.lineno}: pass config.kafka_consumer_options()"
            )
            checked += 1
    assert checked >= 3  # policy and reward followers, the trainer's ingest


def _consumer_loops(tmp_path) -> dict[str, EventConsumerLoop]:
    """Each consumer built as its service builds it, from the service's default config."""
    trainer = TrainerConfig()
    ledger = FeedbackLedger(tmp_path / "ledger.sqlite")
    ingest = FeedbackIngest(ledger, DeadLetterProducer(producer=None), hold_s=trainer.feedback_hold_s)
    loops = {"trainer ingest": ingest.consumer_loop(trainer.kafka, trainer.kafka_consumer_options(), group="g")}
    store = ModelStore(tmp_path / "store")
    for kind, config in (("policy", PolicyConfig()), ("reward", RewardConfig())):
        follower = ModelUpdateFollower(
            kind, store, lambda v, s: None, lambda: None, config.kafka, kafka_options=config.kafka_consumer_options()
        )
        loops[f"{kind} model updates"] = follower.loop
    loops["ConsumerSettings defaults"] = EventConsumerLoop(ConsumerSettings("k:9092", {}, group_id="g"), print)
    return loops


def test_every_consumer_is_within_apache_kafkas_broker_defaults(tmp_path):
    for name, loop in _consumer_loops(tmp_path).items():
        options = loop.client_config()
        session = options["session_timeout_ms"]
        assert GROUP_MIN_SESSION_TIMEOUT_MS <= session <= GROUP_MAX_SESSION_TIMEOUT_MS, name
        assert 3 * options["heartbeat_interval_ms"] <= session, name
        assert options["max_poll_interval_ms"] >= session, name
        assert set(options) <= set(KafkaConsumer.DEFAULT_CONFIG), f"{name}: not kafka-python options"
        # kafka-python checks its options when it builds a consumer; with api_version given it
        # does so without reaching for a broker.
        KafkaConsumer(**{**options, "api_version": (4, 0)}).close()


def test_scram_over_tls_reaches_every_client_as_kafka_python_options(tmp_path):
    config = ServiceConfig(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile="/kafka-ca/ca.crt",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="rlhf-trainer",
        kafka_sasl_password="secret",
    )
    options = config.kafka_consumer_options()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "rlhf-trainer" and options["ssl_cafile"] == "/kafka-ca/ca.crt"
    consumer = KafkaConsumer(bootstrap_servers="k:9093", group_id="g", api_version=(4, 0), **options)
    consumer.close()


@pytest.mark.parametrize(
    "fields, flag",
    [
        ({"kafka_heartbeat_interval_ms": 20_000}, "--kafka-heartbeat-interval-ms"),
        ({"kafka_session_timeout_ms": 0}, "--kafka-session-timeout-ms"),
        ({"kafka_security_protocol": "SASL_SSL"}, "--kafka-sasl-mechanism"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512"},
            "--kafka-sasl-username",
        ),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c.pem"}, "--kafka-ssl-certfile"),
        ({"kafka_ssl_cafile": "/ca.pem"}, "--kafka-security-protocol"),
    ],
)
def test_kafka_settings_a_broker_would_refuse_are_refused_at_start(fields, flag):
    with pytest.raises(ConfigError, match=flag):
        ServiceConfig(**fields)
