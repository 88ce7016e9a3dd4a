"""A background event publisher for services that must never block or fail on the
broker (the policy's generation events)."""

from __future__ import annotations

import collections
import logging
import threading
import time

from google.protobuf.message import Message
from kafka import KafkaProducer

from shared import metrics
from shared.kafka.producer import create_producer, produce_event

log = logging.getLogger(__name__)


class BufferedEventPublisher:
    """Publishes events in the background without ever blocking or failing the
    caller (the policy must keep serving when the broker is down).

    Events wait in a bounded buffer and are retried until sent. One is given
    up on only when the buffer overflows (the oldest goes) or it has waited
    longer than ``max_age_s``; each such drop is logged and counted in
    rlhf_events_dropped_total.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        capacity: int = 10_000,
        max_age_s: float = 600.0,
        producer_overrides: dict | None = None,
    ):
        self.bootstrap = bootstrap
        self.topic = topic
        self.capacity = capacity
        self.max_age_s = max_age_s
        self.producer_overrides = producer_overrides or {}
        self._queue: collections.deque[tuple[float, str, Message]] = collections.deque()
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._producer: KafkaProducer | None = None
        self._thread = threading.Thread(target=self._run, name=f"publisher-{topic}", daemon=True)
        self._thread.start()

    def publish(self, key: str, message: Message) -> None:
        with self._lock:
            if len(self._queue) >= self.capacity:
                _, old_key, _ = self._queue.popleft()
                self._count_drop("buffer_full", old_key)
            self._queue.append((time.monotonic(), key, message))
            metrics.EVENTS_BUFFERED.labels(self.topic).set(len(self._queue))
            self._lock.notify()

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush for up to ``timeout_s``; anything left is dropped, counted and logged."""
        deadline = time.monotonic() + timeout_s
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()) + 1.0)
        with self._lock:
            while self._queue:
                _, key, _ = self._queue.popleft()
                self._count_drop("shutdown", key)
        if self._producer is not None:
            self._producer.close(timeout=1)

    def _count_drop(self, reason: str, key: str) -> None:
        metrics.EVENTS_DROPPED.labels(self.topic, reason).inc()
        log.error("event dropped", extra={"topic": self.topic, "key": key, "reason": reason})

    def _take_batch(self, limit: int = 256) -> list[tuple[float, str, Message]]:
        with self._lock:
            while not self._queue and not self._stop.is_set():
                self._lock.wait(timeout=0.5)
            batch = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
            metrics.EVENTS_BUFFERED.labels(self.topic).set(len(self._queue))
            return batch

    def _requeue(self, items: list[tuple[float, str, Message]]) -> None:
        now = time.monotonic()
        with self._lock:
            for item in reversed(items):
                if now - item[0] > self.max_age_s:
                    self._count_drop("expired", item[1])
                elif len(self._queue) < self.capacity:
                    self._queue.appendleft(item)
                else:
                    self._count_drop("buffer_full", item[1])
            metrics.EVENTS_BUFFERED.labels(self.topic).set(len(self._queue))

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            batch = self._take_batch()
            if not batch:
                continue
            unsent = self._send(batch)
            if unsent:
                self._requeue(unsent)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.2

    def _send(self, batch: list[tuple[float, str, Message]]) -> list[tuple[float, str, Message]]:
        """Send and wait for acks; return the events that were not acknowledged."""
        try:
            if self._producer is None:
                self._producer = create_producer(self.bootstrap, **self.producer_overrides)
        except Exception as exc:  # noqa: BLE001 - broker down: keep everything for retry
            log.warning(
                "broker unreachable; events kept for retry",
                extra={"topic": self.topic, "pending": len(batch), "error": str(exc)},
            )
            return batch
        try:
            futures = [produce_event(self._producer, self.topic, key, msg) for _, key, msg in batch]
            self._producer.flush(timeout=30)
        except Exception as exc:  # noqa: BLE001 - broker down: keep everything for retry
            log.warning(
                "broker unavailable; events kept for retry",
                extra={"topic": self.topic, "pending": len(batch), "error": str(exc)},
            )
            return batch
        unsent = []
        for item, future in zip(batch, futures):
            if future.succeeded():
                metrics.EVENTS_PRODUCED.labels(self.topic).inc()
            else:
                unsent.append(item)
        if unsent:
            log.warning(
                "events not acknowledged; kept for retry with a new producer",
                extra={"topic": self.topic, "pending": len(unsent)},
            )
            # kafka-python's idempotent producer never recovers once the broker
            # has forgotten its producer id (a broker that lost its state); a
            # fresh producer gets a new id. Ordering per key is kept because the
            # unsent events are retried first.
            self._producer.close(timeout=0)
            self._producer = None
        return unsent
