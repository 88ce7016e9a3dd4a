"""Every Kafka client the services make carries the service's
ServiceConfig.kafka_client_options() (TLS, SASL): nothing bypasses them.

Two checks. Behaviour: kafka-python's client classes are replaced by
recorders, each service's Kafka parts are built from a config that asks for
SSL, and every client built must carry the options. Call sites: every place
in shared/, services/ and rlhf_cli/ that makes a producer, consumer or admin
client passes ``kafka_client_options()``, so a new client cannot forget them.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import shared.kafka.admin as kafka_admin
import shared.kafka.consumer as kafka_consumer
import shared.kafka.producer as kafka_producer
from services.feedback.config import FeedbackConfig
from services.feedback.server import FeedbackGatewayServer
from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from services.reward.config import RewardConfig
from services.reward.server import RewardServer
from services.trainer.config import TrainerConfig
from services.trainer.server import TrainerServer
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import events_pb2
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]


class _Future:
    def succeeded(self) -> bool:
        return True

    def get(self, timeout=None):
        return None


class RecordingClient:
    """Stands in for KafkaProducer / KafkaConsumer / KafkaAdminClient: records its
    keyword arguments and answers every call as an idle client would."""

    built: list[tuple[str, dict]] = []
    kind = "client"

    def __init__(self, **kwargs):
        RecordingClient.built.append((self.kind, kwargs))

    def send(self, *args, **kwargs):
        return _Future()

    def partitions_for_topic(self, topic):
        return {0}

    def poll(self, timeout_ms=0, **kwargs):
        return {}

    def assignment(self):
        return set()

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class RecordingProducer(RecordingClient):
    kind = "producer"


class RecordingConsumer(RecordingClient):
    kind = "consumer"


class RecordingAdmin(RecordingClient):
    kind = "admin"


@pytest.fixture()
def recorded(monkeypatch, tmp_path):
    """The recorders in place, and settings that ask for SSL to a CA file."""
    RecordingClient.built = []
    monkeypatch.setattr(kafka_producer, "KafkaProducer", RecordingProducer)
    monkeypatch.setattr(kafka_consumer, "KafkaConsumer", RecordingConsumer)
    monkeypatch.setattr(kafka_admin, "KafkaAdminClient", RecordingAdmin)
    cafile = tmp_path / "kafka-ca.pem"
    cafile.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    settings = dict(
        kafka="kafka.example:9093",
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(cafile),
        port=0,
        metrics_port=-1,
        grace_period_s=0,
    )
    return RecordingClient.built, settings


def assert_all_secured(built, config, kinds: set[str]) -> None:
    wanted = config.kafka_client_options()
    assert wanted["security_protocol"] == "SSL"
    assert {kind for kind, _ in built} >= kinds, f"built {[k for k, _ in built]}, expected {kinds}"
    for kind, kwargs in built:
        missing = {k: v for k, v in wanted.items() if kwargs.get(k) != v}
        assert not missing, f"a {kind} was built without {missing}"


def test_feedback_gateway_producer(recorded):
    built, settings = recorded
    config = FeedbackConfig(**settings)
    server = FeedbackGatewayServer(config)
    server.producer.close()
    assert_all_secured(built, config, {"producer"})


def test_trainer_producers_and_consumer(recorded, tmp_path):
    built, settings = recorded
    config = TrainerConfig(model_store=str(tmp_path / "store"), state_dir=str(tmp_path / "state"), **settings)
    server = TrainerServer(config, reward_fn=lambda prompts, responses: [0.0] * len(prompts))
    server.promoter.producer_factory()
    server.consumer._connect()
    server.ledger.close()
    assert_all_secured(built, config, {"producer", "consumer"})
    assert sum(kind == "producer" for kind, _ in built) == 2, "the trainer's producer and the promoter's"


def test_reward_update_follower(recorded, tmp_path):
    built, settings = recorded
    config = RewardConfig(model_store=str(tmp_path / "store"), **settings)
    server = RewardServer(config)
    assert server.follower is not None
    server.follower.loop._connect()
    assert_all_secured(built, config, {"consumer"})


def test_policy_event_publisher_and_update_follower(recorded, tmp_path, tiny_lm_dir):
    built, settings = recorded
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", lambda out: [shutil.copy2(p, out / p.name) for p in tiny_lm_dir.iterdir()])
    store.set_current("policy", "v1")
    config = PolicyConfig(model_store=str(store.root), **settings)
    service = PolicyService(config)
    try:
        service.start()
        service.publisher.publish("g1", events_pb2.GenerationEvent(generation_id="g1"))
        wait_until(lambda: {k for k, _ in built} >= {"producer", "consumer"}, 30, message="the Kafka clients")
    finally:
        service.stop(0)
    assert_all_secured(built, config, {"producer", "consumer"})


# --- call sites ------------------------------------------------------------------------------------

# Calls that make a Kafka client (directly or through the project's helpers).
CLIENT_MAKERS = {
    "create_producer",
    "ensure_topics",
    "BufferedEventPublisher",
    "ModelUpdateFollower",
    "EventConsumerLoop",
    "ConsumerSettings",
    "consumer_loop",
}
KAFKA_CLASSES = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}
# The modules of shared/kafka/ that make kafka-python clients (and alone may).
KAFKA_CLIENT_MODULES = {"shared/kafka/admin.py", "shared/kafka/producer.py", "shared/kafka/consumer.py"}
# Plumbing that forwards the options it is given (checked by the behaviour tests above),
# and the embedded broker, which is plaintext on loopback by construction.
FORWARDING = KAFKA_CLIENT_MODULES | {
    "shared/kafka/publisher.py",
    "shared/models/update_follower.py",
    "services/trainer/data/ingest.py",
    "rlhf_cli/broker_cmd.py",
}


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def kafka_call_sites() -> list[tuple[str, int, str, str]]:
    """(path, line, name, source) of every call that makes a Kafka client."""
    sites = []
    for folder in ("shared", "services", "rlhf_cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("shared/proto/"):
                continue
            source = path.read_text()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Call) and _called_name(node) in CLIENT_MAKERS | KAFKA_CLASSES:
                    sites.append((rel, node.lineno, _called_name(node), ast.get_source_segment(source, node) or ""))
    return sites


def test_every_kafka_client_is_made_with_the_services_options():
    sites = kafka_call_sites()
    assert any(name == "create_producer" for _, _, name, _ in sites), "the scan finds the call sites"
    direct = [f"{p}:{line}" for p, line, name, _ in sites if name in KAFKA_CLASSES and p not in KAFKA_CLIENT_MODULES]
    assert not direct, f"kafka-python clients made outside {sorted(KAFKA_CLIENT_MODULES)}: {direct}"
    bypassing = [
        f"{p}:{line} {name}(...)"
        for p, line, name, text in sites
        # kafka_consumer_options() is kafka_client_options() plus the consumer group's timing.
        if p not in FORWARDING and "kafka_client_options" not in text and "kafka_consumer_options" not in text
    ]
    assert not bypassing, f"Kafka clients made without ServiceConfig.kafka_client_options(): {bypassing}"
