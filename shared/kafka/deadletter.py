"""Dead letters: a record a consumer cannot accept goes to rlhf.deadletter.v1 with the
reason, never dropped silently (DESIGN.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kafka import KafkaProducer
from kafka.errors import KafkaError

from shared import metrics
from shared.kafka import events
from shared.kafka.producer import produce_event
from shared.proto.rlhf.v1 import events_pb2

log = logging.getLogger(__name__)

# A dead letter carries the record's value; beyond this it carries the first
# bytes only (and says so), so a record near the broker's size limit still fits
# in its dead letter (which adds the key, headers and the error).
MAX_DEAD_LETTER_VALUE_BYTES = 512 * 1024


class DeadLetterProducer:
    """Sends records a consumer could not accept to rlhf.deadletter.v1.

    With ``new_producer``, a send that fails replaces the producer before the
    error reaches the consumer loop (which retries the batch): kafka-python's
    idempotent producer can stay broken for good once the broker has
    forgotten its producer id (a broker that restarted empty, or expired
    producer state), and dead letters are rare enough to build one each time."""

    def __init__(
        self,
        producer: KafkaProducer,
        consumer_group: str = "",
        new_producer: Callable[[], KafkaProducer] | None = None,
    ):
        self.producer = producer
        self.consumer_group = consumer_group
        self.new_producer = new_producer

    def send(self, record, reason: str, detail: str, timeout_s: float = 10.0) -> None:
        value = record.value or b""
        if len(value) > MAX_DEAD_LETTER_VALUE_BYTES:
            detail = f"{detail} [value truncated from {len(value)} to {MAX_DEAD_LETTER_VALUE_BYTES} bytes]"
            value = value[:MAX_DEAD_LETTER_VALUE_BYTES]
        letter = events_pb2.DeadLetter(
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            key=(record.key or b"")[:MAX_DEAD_LETTER_VALUE_BYTES],
            value=value,
            reason=reason,
            error=detail,
            consumer_group=self.consumer_group,
            failed_at=events.now_timestamp(),
            # Kafka allows null header values (kafka-python hands them over as None).
            headers={str(k): (v or b"").decode("utf-8", "replace") for k, v in (record.headers or [])},
        )
        producer = self.producer
        try:
            produce_event(producer, events.DEADLETTER_TOPIC, record.topic, letter).get(timeout=timeout_s)
        except KafkaError as exc:
            if self.new_producer is not None:
                log.warning(
                    "dead-letter producer failed; replacing it", extra={"error": f"{type(exc).__name__}: {exc}"}
                )
                self.producer = self.new_producer()
                try:
                    producer.close(timeout=0)
                except KafkaError:
                    pass  # kafka-python raises from its flush when a record is still pending
            raise  # the consumer loop retries the batch
        metrics.EVENTS_DEADLETTERED.labels(record.topic, reason).inc()
        log.warning(
            "dead-lettered event",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason,
                "error": detail,
            },
        )
