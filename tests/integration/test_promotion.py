"""Promoter: a change whose ModelUpdateEvent Kafka did not acknowledge is
re-published, never redone as a second version."""

from __future__ import annotations

import pytest

from services.trainer.loop.promotion import Promoter
from shared.errors import Unavailable
from shared.kafka import events
from shared.kafka.admin import ensure_topics
from shared.kafka.broker import EmbeddedBroker, free_port
from shared.kafka.producer import create_producer
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import events_pb2
from tests.helpers import read_topic, wait_until


def weights(text: bytes):
    def fill(path):
        (path / "model.safetensors").write_bytes(text)

    return fill


@pytest.mark.slow  # a second broker stopped and restarted: ~15 s
def test_unacknowledged_update_is_republished_not_duplicated(tmp_path):
    store = ModelStore(tmp_path)
    store.write_version("policy", weights(b"v1"))
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    ensure_topics(broker.bootstrap)
    promoter = Promoter(
        store,
        lambda: create_producer(
            f"127.0.0.1:{port}", delivery_timeout_ms=1500, request_timeout_ms=1000, bootstrap_timeout_ms=1000
        ),
        ack_timeout_s=3,
    )
    promoter.announce_pending()
    promoter._producer = promoter.producer_factory()  # connected while the broker was up
    broker.stop()  # then the broker goes away, and comes back with no memory of this producer

    update = promoter.promote_new(
        "policy", weights(b"v2"), parent_version="v1", eval_metrics={"kl": 1.0}, reason="gate passed"
    )
    assert update.version == "v2"
    assert store.versions("policy") == ["v1", "v2"], "stored once"
    assert store.current("policy") == "v2", "the change happened even though nobody was told yet"
    assert promoter.announce_pending() is False, "still no broker"
    with pytest.raises(Unavailable, match="Do not repeat the call"):
        promoter.rollback("policy", "", "operator rollback")
    assert store.current("policy") == "v1"

    with EmbeddedBroker(port=port) as back:
        ensure_topics(back.bootstrap)
        wait_until(promoter.announce_pending, 30, interval_s=0.5, message="the pending update is published")
        published = [
            m
            for _, m in read_topic(back.bootstrap, events.MODEL_UPDATES_TOPIC, events_pb2.ModelUpdateEvent, min_count=1)
        ]
        # The Promoter re-publishes only the latest unannounced change. Producers
        # it abandoned while the broker was down may still deliver their own
        # attempts when it returns (kafka-python's force-close does not stop a
        # sender already waiting on the broker), in any order; that is why
        # replicas serve CURRENT, not the event's version (version_to_serve).
        assert ("v1", events_pb2.MODEL_UPDATE_ACTION_ROLLBACK) in [(m.version, m.action) for m in published]
        pending = promoter._unannounced
        assert pending is None, "nothing left to announce"
        assert store.versions("policy") == ["v1", "v2"], "never redone as a new version"
        assert store.version_to_serve("policy", published[0].version, published[0].manifest_sha256)[0] == "v1"
    promoter.close()
