"""shared.kafka's admin, producers, dead letters, consumer loop and publisher against the real embedded broker."""

from __future__ import annotations

import threading
import time
import types

from kafka import KafkaConsumer

from shared.kafka import events
from shared.kafka.admin import ensure_topics
from shared.kafka.consumer import ConsumerSettings, EventConsumerLoop, InvalidEvent
from shared.kafka.deadletter import MAX_DEAD_LETTER_VALUE_BYTES, DeadLetterProducer
from shared.kafka.producer import create_producer, produce_event
from shared.kafka.publisher import BufferedEventPublisher
from shared.proto.rlhf.v1 import events_pb2
from tests.helpers import FAST_GROUP, read_topic, wait_until


def _topic(broker, name: str, partitions: int = 2) -> str:
    ensure_topics(broker.bootstrap, {name: partitions})
    return name


def _produce(broker, topic: str, n: int, prefix: str = "g") -> None:
    """Produce one at a time, each acknowledged, as model updates are published."""
    producer = create_producer(broker.bootstrap)
    for i in range(n):
        message = events_pb2.GenerationEvent(generation_id=f"{prefix}{i}")
        produce_event(producer, topic, f"{prefix}{i}", message).get(timeout=10)
    producer.close()


class _GroupMember:
    """One consumer-group member polling back to back on its own thread, as
    EventConsumerLoop does. kafka-python 3.0.12 throws away a JoinGroup ->
    SyncGroup round that completes while no poll() is waiting on it and starts
    a new one, so a member that sleeps between polls can rejoin forever (Tansu
    holds each JoinGroup about 1 s). Remove the thread when kafka-python keeps
    the finished join's assignment."""

    def __init__(self, broker, topic: str, group: str):
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            **FAST_GROUP,
        )
        self._lock = threading.Lock()
        self._owned: frozenset[int] = frozenset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_until_stopped, daemon=True)
        self._thread.start()

    def _poll_until_stopped(self) -> None:
        while not self._stop.is_set():
            self.consumer.poll(timeout_ms=200)
            with self._lock:
                self._owned = frozenset(tp.partition for tp in self.consumer.assignment())

    def owned(self) -> frozenset[int]:
        with self._lock:
            return self._owned

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()


def test_consumer_group_rebalances_to_a_second_member(broker, unique_name):
    topic = _topic(broker, f"t-{unique_name}", partitions=4)
    group = f"g-{unique_name}"
    members = [_GroupMember(broker, topic, group)]
    try:
        try:
            wait_until(lambda: members[0].owned() == {0, 1, 2, 3}, 60, message="first member owns all 4 partitions")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it owns {sorted(members[0].owned())}") from None
        members.append(_GroupMember(broker, topic, group))
        first, second = members

        def split_disjointly() -> bool:
            a, b = first.owned(), second.owned()
            return bool(a) and bool(b) and not (a & b) and a | b == {0, 1, 2, 3}

        try:
            wait_until(split_disjointly, 60, message="a disjoint split of the 4 partitions between both members")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; first {sorted(first.owned())}, second {sorted(second.owned())}") from None
    finally:
        for member in members:
            member.close()


def test_loop_dead_letters_poison_and_commits_the_rest(broker, unique_name):
    topic = _topic(broker, f"t-{unique_name}", partitions=1)
    producer = create_producer(broker.bootstrap)
    produce_event(producer, topic, "ok1", events_pb2.GenerationEvent(generation_id="ok1")).get(10)
    producer.send(topic, key=b"bad", value=b"\xff\x00garbage").get(10)
    produce_event(producer, topic, "invalid", events_pb2.GenerationEvent(generation_id="")).get(10)
    produce_event(producer, topic, "ok2", events_pb2.GenerationEvent(generation_id="ok2")).get(10)

    handled: list[str] = []
    committed_batches = []

    def handler(event):
        if not event.message.generation_id:
            raise InvalidEvent("invalid_field", "generation_id: required")
        handled.append(event.message.generation_id)

    settings = ConsumerSettings(
        broker.bootstrap, {topic: events_pb2.GenerationEvent}, group_id=f"g-{unique_name}", **FAST_GROUP
    )
    loop = EventConsumerLoop(
        settings,
        handler,
        dead_letters=DeadLetterProducer(producer, settings.group_id),
        before_commit=lambda: committed_batches.append(list(handled)),
    )
    stop = threading.Event()
    thread = loop.start(stop)
    wait_until(lambda: handled == ["ok1", "ok2"], 20, message="good events handled")
    stop.set()
    thread.join(10)

    letters = [
        m
        for r, m in read_topic(broker.bootstrap, events.DEADLETTER_TOPIC, events_pb2.DeadLetter)
        if m.source_topic == topic
    ]
    assert sorted((m.reason, m.source_offset) for m in letters) == [("decode_error", 1), ("invalid_field", 2)]
    assert letters[0].value or letters[1].value, "the raw bytes travel with the dead letter"
    assert committed_batches, "before_commit ran"

    # A restarted member of the same group resumes after the committed offsets.
    again: list[str] = []
    loop2 = EventConsumerLoop(
        settings,
        lambda e: again.append(e.message.generation_id),
        dead_letters=DeadLetterProducer(producer, settings.group_id),
    )
    stop2 = threading.Event()
    t2 = loop2.start(stop2)
    wait_until(loop2.ready.is_set, 15, message="second loop assigned")
    produce_event(producer, topic, "ok3", events_pb2.GenerationEvent(generation_id="ok3")).get(10)
    wait_until(lambda: again == ["ok3"], 15, message="only the new event")
    stop2.set()
    t2.join(10)
    producer.close()


def test_handler_errors_are_retried_not_skipped(broker, unique_name):
    topic = _topic(broker, f"t-{unique_name}", partitions=1)
    _produce(broker, topic, 1, prefix="flaky")
    attempts = []

    def flaky(event):
        attempts.append(event.offset)
        if len(attempts) < 3:
            raise ConnectionError("ledger briefly unavailable")

    settings = ConsumerSettings(
        broker.bootstrap,
        {topic: events_pb2.GenerationEvent},
        group_id=f"g-{unique_name}",
        retry_backoff_s=0.05,
        **FAST_GROUP,
    )
    loop = EventConsumerLoop(settings, flaky)
    stop = threading.Event()
    thread = loop.start(stop)
    wait_until(lambda: len(attempts) >= 3, 20, message="three attempts")
    stop.set()
    thread.join(10)
    assert attempts == [0, 0, 0]


def test_broadcast_loop_without_group_starts_at_the_end(broker, unique_name):
    topic = _topic(broker, f"t-{unique_name}", partitions=1)
    _produce(broker, topic, 3, prefix="old")
    seen: list[str] = []
    settings = ConsumerSettings(
        broker.bootstrap, {topic: events_pb2.GenerationEvent}, group_id=None, from_beginning=False
    )
    loop = EventConsumerLoop(settings, lambda e: seen.append(e.message.generation_id))
    stop = threading.Event()
    thread = loop.start(stop)
    wait_until(loop.ready.is_set, 10, message="assigned")
    _produce(broker, topic, 2, prefix="new")
    wait_until(lambda: seen == ["new0", "new1"], 10, message="only new events")
    stop.set()
    thread.join(10)


def test_buffered_publisher_survives_a_missing_broker_then_delivers(broker, unique_name):
    from shared.kafka.broker import EmbeddedBroker, free_port

    port = free_port()
    topic = "rlhf.generations.v1"
    publisher = BufferedEventPublisher(
        f"127.0.0.1:{port}", topic, capacity=100, producer_overrides={"bootstrap_timeout_ms": 500}
    )
    for i in range(5):
        publisher.publish(f"late{i}", events_pb2.GenerationEvent(generation_id=f"late{i}-{unique_name}"))
    assert publisher.pending() > 0, "nothing can be sent yet"
    with EmbeddedBroker(port=port) as late_broker:
        ensure_topics(late_broker.bootstrap)
        wait_until(lambda: publisher.pending() == 0, 30, message="buffer drained once the broker is up")
        got = read_topic(late_broker.bootstrap, topic, events_pb2.GenerationEvent, min_count=5)
        assert sorted(m.generation_id for _, m in got) == [f"late{i}-{unique_name}" for i in range(5)]
        publisher.close()


def test_buffered_publisher_counts_what_it_drops(unique_name):
    from shared import metrics
    from shared.kafka.broker import free_port

    topic = f"t-{unique_name}"
    publisher = BufferedEventPublisher(
        f"127.0.0.1:{free_port()}", topic, capacity=2, producer_overrides={"bootstrap_timeout_ms": 200}
    )
    for i in range(5):
        publisher.publish(f"k{i}", events_pb2.GenerationEvent(generation_id=f"k{i}"))
    publisher.close(timeout_s=0.2)
    dropped = sum(
        metrics.EVENTS_DROPPED.labels(topic, reason)._value.get() for reason in ("buffer_full", "shutdown", "expired")
    )
    assert dropped == 5, "every event not delivered is counted"


def test_buffered_publisher_recovers_when_the_broker_restarts_empty(unique_name):
    from shared.kafka.broker import EmbeddedBroker, free_port

    port = free_port()
    topic = "rlhf.generations.v1"
    overrides = {"bootstrap_timeout_ms": 1000, "delivery_timeout_ms": 1500, "request_timeout_ms": 1000}
    publisher = BufferedEventPublisher(f"127.0.0.1:{port}", topic, capacity=100, producer_overrides=overrides)
    with EmbeddedBroker(port=port) as first:
        ensure_topics(first.bootstrap)
        publisher.publish("before", events_pb2.GenerationEvent(generation_id=f"before-{unique_name}"))
        wait_until(lambda: publisher.pending() == 0, 20, message="first event sent")
    # Same address, new broker with no memory of the publisher's producer id.
    with EmbeddedBroker(port=port) as second:
        ensure_topics(second.bootstrap)
        publisher.publish("after", events_pb2.GenerationEvent(generation_id=f"after-{unique_name}"))
        got = read_topic(second.bootstrap, topic, events_pb2.GenerationEvent, min_count=1, timeout_s=30)
        assert [m.generation_id for _, m in got] == [f"after-{unique_name}"]
        publisher.close()


def test_a_failed_batch_is_consumed_again_and_the_loop_lives_on(broker, unique_name):
    # Found while fuzzing the topics: any exception out of a batch (a dead letter the broker refused,
    # a commit refused after a rebalance, a failing before_commit) ended the consumer thread.
    topic = _topic(broker, f"t-{unique_name}", partitions=1)
    _produce(broker, topic, 1, prefix="again")
    handled: list[str] = []
    commits: list[int] = []

    def before_commit():
        commits.append(len(handled))
        if len(commits) == 1:
            raise OSError("disk full for a moment")

    # The embedded broker's group timing, as every service on it runs: with Apache's 45 s session the
    # reconnected member waited out its predecessor's session (47 s against this test's 60 s wait).
    settings = ConsumerSettings(
        broker.bootstrap, {topic: events_pb2.GenerationEvent}, group_id=f"g-{unique_name}", **FAST_GROUP
    )
    loop = EventConsumerLoop(settings, lambda e: handled.append(e.message.generation_id), before_commit=before_commit)
    stop = threading.Event()
    thread = loop.start(stop)
    wait_until(lambda: len(commits) >= 2, 60, message="the batch consumed again after the failure")
    assert thread.is_alive()
    stop.set()
    thread.join(10)
    assert handled[:2] == ["again0", "again0"], "not committed the first time, so handled again (at least once)"


def test_dead_letters_carry_null_headers_and_a_huge_value(broker, unique_name):
    # Found while fuzzing the topics: a null header value (legal in Kafka; kafka-python hands it over
    # as None) crashed DeadLetterProducer.send, and a record near the size limit made a
    # dead letter too large to produce.
    topic = f"t-{unique_name}"
    record = types.SimpleNamespace(
        topic=topic,
        partition=0,
        offset=7,
        key=b"k",
        value=b"x" * (MAX_DEAD_LETTER_VALUE_BYTES + 600_000),
        headers=[("content-type", None), ("x-trace", b"\xff\xfe")],
    )
    producer = create_producer(broker.bootstrap)
    try:
        DeadLetterProducer(producer, "g").send(record, "decode_error", "not protobuf")
    finally:
        producer.close()
    [letter] = [
        m
        for _, m in read_topic(broker.bootstrap, events.DEADLETTER_TOPIC, events_pb2.DeadLetter)
        if m.source_topic == topic
    ]
    assert letter.headers == {"content-type": "", "x-trace": "\ufffd\ufffd"}
    assert len(letter.value) == MAX_DEAD_LETTER_VALUE_BYTES and "value truncated from" in letter.error


def _produce_to_partition_0(bootstrap: str, topic: str, n: int, prefix: str) -> None:
    producer = create_producer(bootstrap)
    for i in range(n):
        value, headers = events.encode(events_pb2.GenerationEvent(generation_id=f"{prefix}{i}"))
        producer.send(topic, value=value, headers=headers, partition=0).get(timeout=10)
    producer.close()


def test_a_loop_reads_everything_a_broker_restarted_empty_gets_without_restarting(unique_name):
    # Found in the broker-outage fault test: kafka-python keeps a partition's position across a
    # reconnect (and across a rebalance that assigns it again), and Tansu answers a fetch beyond the
    # end with no records and no OFFSET_OUT_OF_RANGE, so a loop that read 6 records from the old
    # broker waited at offset 6 of the new one: its first 6 records were never read, and the loop
    # counted itself caught up.
    from shared.kafka.broker import EmbeddedBroker, free_port

    port = free_port()
    topic = f"t-{unique_name}"
    seen: list[str] = []
    settings = ConsumerSettings(
        f"127.0.0.1:{port}", {topic: events_pb2.GenerationEvent}, group_id=None, caught_up_topics=(topic,)
    )
    loop = EventConsumerLoop(settings, lambda e: seen.append(e.message.generation_id))
    stop = threading.Event()
    # 4 partitions, all records on partition 0: the loop's own metadata requests may create the
    # topic on the new broker before the test does, and Tansu creates it with 4.
    with EmbeddedBroker(port=port) as first:
        _topic(first, topic, partitions=4)
        _produce_to_partition_0(first.bootstrap, topic, 6, prefix="before")
        thread = loop.start(stop)
        wait_until(lambda: len(seen) == 6, 30, message="the first broker's records read")
    with EmbeddedBroker(port=port) as second:  # same address, empty
        _topic(second, topic, partitions=4)
        _produce_to_partition_0(second.bootstrap, topic, 3, prefix="after")
        produced_at = time.time()
        try:
            wait_until(lambda: seen[6:] == ["after0", "after1", "after2"], 30, message="the new broker's records")
            wait_until(lambda: (loop.caught_up_at(topic) or 0) > produced_at, 30, message="caught up again")
        finally:
            stop.set()
            thread.join(10)
        assert seen == [f"before{i}" for i in range(6)] + ["after0", "after1", "after2"]
