"""Helpers the tests share: read a topic from the start, wait for a condition, find free service ports."""

from __future__ import annotations

import random
import socket
import time

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

from shared.kafka import events
from shared.kafka.broker import EMBEDDED_GROUP_TIMING

# Consumer-group timing for the embedded broker (a group forms in about 3 s,
# not the 90 s Apache Kafka's default session timeout would take on Tansu):
# for ConsumerSettings / KafkaConsumer, and for a service config.
FAST_GROUP = dict(EMBEDDED_GROUP_TIMING)
FAST_GROUP_CONFIG = {f"kafka_{name}": value for name, value in EMBEDDED_GROUP_TIMING.items()}


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {message}")


def read_topic(bootstrap: str, topic: str, message_cls, *, timeout_s: float = 5.0, min_count: int = 0):
    """Every record currently on ``topic`` (all partitions, no consumer group),
    decoded; waits up to ``timeout_s`` for at least ``min_count``.

    It always reads up to the end offsets it found, however long the topic is:
    a caller looks for the newest records, and on the session broker a busy
    machine may not read every earlier test's records within ``timeout_s``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out = []
        deadline = time.monotonic() + timeout_s
        stuck_at = time.monotonic() + max(timeout_s, 120.0)  # the broker stopped answering
        while time.monotonic() < stuck_at:
            for records in consumer.poll(timeout_ms=100).values():
                for r in records:
                    out.append((r, events.decode(r.value, r.headers, message_cls) if message_cls else None))
            done = all(consumer.position(tp) >= ends[tp] for tp in parts)
            if done and (len(out) >= min_count or time.monotonic() >= deadline):
                return out
            if done:
                ends = consumer.end_offsets(parts)
        raise AssertionError(f"read {len(out)} records of {topic} but not up to its end offsets {ends}")
    finally:
        consumer.close()


def start_group_at_end(bootstrap: str, group: str, topics) -> None:
    """Commit ``group``'s offsets at the current end of every partition of ``topics``,
    so a service started with that group reads what is produced from now on, not the
    session broker's backlog (every earlier test's events). Tansu answers the end
    offset with the last record batch's base offset + 1, so a group may still see the
    tail of the last batch per partition: bounded, and handlers are idempotent."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        consumer.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in consumer.end_offsets(parts).items()})
    finally:
        consumer.close(autocommit=False)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))  # as the services bind
        except OSError:
            return False
        return True


def free_port_offset(policy_replicas: int = 1) -> int:
    """An offset at which every service's gRPC and metrics port (rlhf_cli.stack), with
    ``policy_replicas`` policy replicas, is free. The range puts the gRPC ports above
    and the metrics ports below Linux's ephemeral range (32768-60999), so no client
    connection can take them between this check and the services binding them."""
    from rlhf_cli.stack import SERVICE_PORTS, policy_replica_ports

    ports = {p for pair in SERVICE_PORTS.values() for p in pair}
    ports |= {p for i in range(policy_replicas) for p in policy_replica_ports(i)}
    candidates = [offset for offset in range(10950, 15480, 7) if max(ports) + offset <= 65535]
    random.Random().shuffle(candidates)
    for offset in candidates:
        if all(_port_free(p + offset) for p in ports):
            return offset
    raise RuntimeError("no free port offset")
