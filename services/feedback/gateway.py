"""The feedback gateway's core: validate, deduplicate, produce, wait for the ack.

No grpc here; the servicer in server.py only translates requests and replies.

Idempotency: the first answer for each feedback_id is kept for ``dedup_ttl_s``
(bounded by ``dedup_capacity``), and concurrent submissions of one id are
single-flighted so it is produced once. This covers one gateway replica while
the id is remembered; across replicas and restarts the trainer's ledger,
which deduplicates by feedback_id, is the final guarantee.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from kafka import KafkaProducer
from prometheus_client import Counter

from shared import events, metrics
from shared.errors import ResourceExhausted, Unavailable
from shared.feedback_rules import FeedbackLimits, batch_problems, feedback_problems, fill_defaults, raise_first
from shared.kafka_io import produce_event
from shared.proto.rlhf.v1 import events_pb2

log = logging.getLogger(__name__)

FEEDBACK_ACCEPTED = Counter(
    "rlhf_feedback_accepted_total", "feedback events acknowledged by the broker, by kind", ["kind"]
)
FEEDBACK_DUPLICATES = Counter("rlhf_feedback_duplicates_total", "resubmitted feedback ids answered from the cache")


@dataclass(frozen=True)
class FeedbackReceipt:
    """The answer for one accepted feedback event."""

    feedback_id: str
    duplicate: bool
    accepted_at_ns: int
    partition: int
    offset: int


class FirstAnswerCache:
    """First answers by feedback_id (bounded, expiring) plus the submissions
    in flight, so a duplicate either gets the stored answer or waits for the
    one being produced instead of producing again."""

    def __init__(self, ttl_s: float, capacity: int):
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._answers: collections.OrderedDict[str, tuple[float, FeedbackReceipt]] = collections.OrderedDict()
        self._in_flight: dict[str, Future] = {}
        self._lock = threading.Lock()

    def claim(self, feedback_id: str) -> tuple[FeedbackReceipt | None, Future, bool]:
        """(stored answer or None, future of the answer, whether the caller must produce it)."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            hit = self._answers.get(feedback_id)
            if hit is not None:
                return hit[1], None, False
            pending = self._in_flight.get(feedback_id)
            if pending is not None:
                return None, pending, False
            future: Future = Future()
            self._in_flight[feedback_id] = future
            return None, future, True

    def finish(self, feedback_id: str, receipt: FeedbackReceipt) -> None:
        with self._lock:
            future = self._in_flight.pop(feedback_id)
            self._answers[feedback_id] = (time.monotonic(), receipt)
            while len(self._answers) > self.capacity:
                self._answers.popitem(last=False)
        future.set_result(receipt)

    def fail(self, feedback_id: str, exc: BaseException) -> None:
        # Forget the id so the client's retry produces it again.
        with self._lock:
            future = self._in_flight.pop(feedback_id)
        future.set_exception(exc)

    def _expire(self, now: float) -> None:
        answers = self._answers
        while answers:
            stored_at = next(iter(answers.values()))[0]
            if now - stored_at <= self.ttl_s:
                break
            answers.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)


class ClientRateLimiter:
    """A token bucket per client id: ``rate_per_s`` events a second with
    bursts up to ``burst``. Idle buckets are forgotten so memory stays bounded."""

    def __init__(self, rate_per_s: float, burst: float, max_clients: int = 100_000):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client_id: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens or raise ResourceExhausted with when to retry."""
        if self.rate_per_s <= 0:
            return
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(client_id)
            if bucket is None:
                bucket = [self.burst, now]
                self._buckets[client_id] = bucket
                if len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(client_id)
                bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
                bucket[1] = now
            if bucket[0] >= cost:
                bucket[0] -= cost
                return
            wait_s = (cost - bucket[0]) / self.rate_per_s
        raise ResourceExhausted(
            f"rate limit: {self.rate_per_s:g} feedback events/s per client (burst {self.burst:g}); "
            f"retry in {wait_s:.2f} s",
            retry_after_s=wait_s,
        )


class FeedbackGateway:
    """Validates FeedbackEvents and produces each accepted one exactly once
    (per feedback_id) to rlhf.feedback.v1, answering after the broker's ack."""

    def __init__(
        self,
        producer: KafkaProducer,
        limits: FeedbackLimits,
        answers: FirstAnswerCache,
        limiter: ClientRateLimiter,
        *,
        ack_timeout_s: float = 10.0,
    ):
        self.producer = producer
        self.limits = limits
        self.answers = answers
        self.limiter = limiter
        self.ack_timeout_s = ack_timeout_s
        self._accepted = {
            kind: FEEDBACK_ACCEPTED.labels(kind) for kind in ("rating", "preference", "correction", "flag", "deletion")
        }
        self._produced = metrics.EVENTS_PRODUCED.labels(events.FEEDBACK_TOPIC)

    def submit(self, event: events_pb2.FeedbackEvent, client_id: str) -> FeedbackReceipt:
        """Validate with fields named ``feedback.…``, then accept."""
        _assign_defaults(event)
        raise_first(feedback_problems(event, self.limits, prefix="feedback."))
        self.limiter.acquire(client_id, 1)
        return self._accept([event])[0]

    def submit_batch(self, batch: Sequence[events_pb2.FeedbackEvent], client_id: str) -> list[FeedbackReceipt]:
        """All items are validated before any is produced."""
        for event in batch[: self.limits.max_batch_size]:
            _assign_defaults(event)
        raise_first(batch_problems(batch, self.limits))
        self.limiter.acquire(client_id, len(batch))
        return self._accept(batch)

    def _accept(self, batch: Sequence[events_pb2.FeedbackEvent]) -> list[FeedbackReceipt]:
        # Claim every id first, then send all owned events before waiting for
        # any ack, so a batch costs one round trip to the broker, not one per item.
        claims = [self.answers.claim(e.feedback_id) for e in batch]
        sends = []
        for event, (_stored, _future, owner) in zip(batch, claims):
            if owner:
                try:
                    # A deletion request names no generation: it is keyed by its user.
                    key = event.generation_id or event.user_id
                    sent = produce_event(self.producer, events.FEEDBACK_TOPIC, key, event)
                    sends.append((event, sent))
                except Exception as exc:  # noqa: BLE001 - e.g. buffer full: the send never started
                    sends.append((event, exc))
        for event, sent in sends:
            self._settle(event, sent)
        receipts = []
        for stored, future, owner in claims:
            if stored is not None:
                receipts.append(_as_duplicate(stored))
                continue
            try:
                receipt = future.result(timeout=self.ack_timeout_s + 1.0)
            except Unavailable:  # the owner's failure is ours too
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. the owner is still waiting after our timeout
                raise Unavailable(
                    f"feedback not accepted yet: {type(exc).__name__}; retry with the same feedback_id"
                ) from exc
            receipts.append(receipt if owner else _as_duplicate(receipt))
        return receipts

    def _settle(self, event: events_pb2.FeedbackEvent, sent) -> None:
        """Wait for one ack and publish the answer (or the failure) to waiters."""
        try:
            if isinstance(sent, Exception):
                raise sent
            meta = sent.get(timeout=self.ack_timeout_s)
        except Exception as exc:  # noqa: BLE001
            log.warning("feedback not acknowledged", extra={"feedback_id": event.feedback_id, "error": str(exc)})
            self.answers.fail(
                event.feedback_id,
                Unavailable(
                    f"the broker did not acknowledge the feedback ({type(exc).__name__}: {exc}); retry with the same "
                    "feedback_id"
                ),
            )
            return
        receipt = FeedbackReceipt(event.feedback_id, False, time.time_ns(), meta.partition, meta.offset)
        self._produced.inc()
        self._accepted[event.WhichOneof("kind")].inc()
        self.answers.finish(event.feedback_id, receipt)


def _assign_defaults(event: events_pb2.FeedbackEvent) -> None:
    if not event.feedback_id:
        event.feedback_id = events.new_id()
    if not event.HasField("created_at"):
        event.created_at.FromNanoseconds(time.time_ns())
    fill_defaults(event)


def _as_duplicate(receipt: FeedbackReceipt) -> FeedbackReceipt:
    FEEDBACK_DUPLICATES.inc()
    return FeedbackReceipt(receipt.feedback_id, True, receipt.accepted_at_ns, receipt.partition, receipt.offset)
