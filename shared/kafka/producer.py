"""Producers every service uses: acks=all, idempotence and retries (a retry never
duplicates a record), and the one place that encodes and sends an event."""

from __future__ import annotations

from google.protobuf.message import Message
from kafka import KafkaProducer

from shared.kafka import events


def create_producer(bootstrap: str, **overrides) -> KafkaProducer:
    """A producer with acks=all, idempotence and retries; raises KafkaError when
    no broker answers within ``bootstrap_timeout_ms``."""
    config = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        retries=2**31 - 1,
        delivery_timeout_ms=30_000,
        request_timeout_ms=10_000,
        max_block_ms=10_000,
        linger_ms=2,
        bootstrap_timeout_ms=5_000,
        client_id="rlhf-producer",
    )
    config.update(overrides)
    return KafkaProducer(**config)


def produce_event(producer: KafkaProducer, topic: str, key: str | bytes, message: Message):
    """Send ``message``; returns the kafka future (``.get()`` waits for the ack)."""
    value, headers = events.encode(message)
    key_bytes = key.encode() if isinstance(key, str) else key
    return producer.send(topic, key=key_bytes, value=value, headers=headers)
