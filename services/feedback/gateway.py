"""The feedback gateway's core: validate, deduplicate, produce, wait for the ack.

No grpc here; the servicer in server.py only translates requests and replies.

Idempotency: the first answer for each feedback_id is kept for ``dedup_ttl_s``
(bounded by ``dedup_capacity``), and concurrent submissions of one id are
single-flighted so it is produced once (services.feedback.dedup). This covers
one gateway replica while the id is remembered; across replicas and restarts
the trainer's ledger, which deduplicates by feedback_id, is the final
guarantee. Each client is rate-limited (services.feedback.rate_limit).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter

from services.feedback.dedup import FirstAnswerCache
from services.feedback.rate_limit import ClientRateLimiter
from shared import metrics
from shared.errors import PermissionDenied, Unavailable
from shared.feedback_rules import FeedbackLimits, batch_problems, feedback_problems, fill_defaults, raise_first
from shared.kafka import events
from shared.kafka.producer import produce_event
from shared.proto.rlhf.v1 import events_pb2

log = logging.getLogger(__name__)

FEEDBACK_ACCEPTED = Counter(
    "rlhf_feedback_accepted_total", "feedback events acknowledged by the broker, by kind", ["kind"]
)
FEEDBACK_DUPLICATES = Counter("rlhf_feedback_duplicates_total", "resubmitted feedback ids answered from the cache")
PRODUCER_REPLACED = Counter("rlhf_feedback_producer_replaced_total", "Kafka producers replaced after failed sends")


@dataclass(frozen=True)
class FeedbackReceipt:
    """The answer for one accepted feedback event."""

    feedback_id: str
    duplicate: bool
    accepted_at_ns: int
    partition: int
    offset: int


class FeedbackGateway:
    """Validates FeedbackEvents and produces each accepted one exactly once
    (per feedback_id) to rlhf.feedback.v1, answering after the broker's ack."""

    def __init__(
        self,
        producer: KafkaProducer,
        limits: FeedbackLimits,
        answers: FirstAnswerCache[FeedbackReceipt],
        limiter: ClientRateLimiter,
        *,
        ack_timeout_s: float = 10.0,
        new_producer: Callable[[], KafkaProducer] | None = None,
    ):
        self.producer = producer
        # Builds a replacement when the producer fails (see _replace_failed_producer).
        self.new_producer = new_producer
        self._producer_lock = threading.Lock()
        self._producer_built_at = time.monotonic()
        self._rebuilding = False
        self.limits = limits
        self.answers = answers
        self.limiter = limiter
        self.ack_timeout_s = ack_timeout_s
        self._accepted = {
            kind: FEEDBACK_ACCEPTED.labels(kind)
            for kind in ("rating", "preference", "ranking", "correction", "flag", "deletion")
        }
        self._produced = metrics.EVENTS_PRODUCED.labels(events.FEEDBACK_TOPIC)

    def submit(self, event: events_pb2.FeedbackEvent, client_id: str, subject: str = "") -> FeedbackReceipt:
        """Validate with fields named ``feedback.…``, then accept. ``subject``: see :func:`bind_user_id`."""
        self._check_one(event, client_id, subject)
        return self._accept([event])[0]

    def submit_batch(
        self, batch: Sequence[events_pb2.FeedbackEvent], client_id: str, subject: str = ""
    ) -> list[FeedbackReceipt]:
        """All items are validated (and bound to ``subject``) before any is produced."""
        self._check_batch(batch, client_id, subject)
        return self._accept(batch)

    async def submit_async(self, event: events_pb2.FeedbackEvent, client_id: str, subject: str = "") -> FeedbackReceipt:
        """:meth:`submit` for an asyncio caller: the same checks and the same answer, after the
        broker's ack, awaited instead of blocking a thread."""
        self._check_one(event, client_id, subject)
        return (await self._accept_async([event]))[0]

    async def submit_batch_async(
        self, batch: Sequence[events_pb2.FeedbackEvent], client_id: str, subject: str = ""
    ) -> list[FeedbackReceipt]:
        """:meth:`submit_batch` for an asyncio caller."""
        self._check_batch(batch, client_id, subject)
        return await self._accept_async(batch)

    def _check_one(self, event: events_pb2.FeedbackEvent, client_id: str, subject: str) -> None:
        _assign_defaults(event)
        bind_user_id(event, subject, "feedback.user_id")
        raise_first(feedback_problems(event, self.limits, prefix="feedback."))
        self.limiter.acquire(client_id, 1)

    def _check_batch(self, batch: Sequence[events_pb2.FeedbackEvent], client_id: str, subject: str) -> None:
        for i, event in enumerate(batch[: self.limits.max_batch_size]):
            _assign_defaults(event)
            bind_user_id(event, subject, f"feedback[{i}].user_id")
        raise_first(batch_problems(batch, self.limits))
        self.limiter.acquire(client_id, len(batch))

    def _accept(self, batch: Sequence[events_pb2.FeedbackEvent]) -> list[FeedbackReceipt]:
        claims, sends, producer = self._send_owned(batch)
        self._settle_all(sends, producer, self.ack_timeout_s)
        return [_receipt(stored, future, owner, self.ack_timeout_s + 1.0) for stored, future, owner in claims]

    async def _accept_async(self, batch: Sequence[events_pb2.FeedbackEvent]) -> list[FeedbackReceipt]:
        claims, sends, producer = self._send_owned(batch)
        started = [sent for _event, sent in sends if not isinstance(sent, Exception)]
        if started:
            await _all_done(started, self.ack_timeout_s)
        # Every ack has come or the wait timed out: settling no longer blocks.
        self._settle_all(sends, producer, 0.0)
        receipts = []
        for stored, future, owner in claims:
            if stored is None and not future.done():
                # Another call owns this id and is still waiting for its ack: wait as long as
                # the blocking path would, without blocking the event loop (nor cancelling the
                # owner's future when the wait ends).
                await asyncio.wait([asyncio.wrap_future(future)], timeout=self.ack_timeout_s + 1.0)
            receipts.append(_receipt(stored, future, owner, 0.0))
        return receipts

    def _send_owned(self, batch: Sequence[events_pb2.FeedbackEvent]) -> tuple[list, list, KafkaProducer]:
        """Claim every id, then send each owned event without waiting for any ack,
        so a batch costs one round trip to the broker, not one per item."""
        claims = [self.answers.claim(e.feedback_id) for e in batch]
        producer = self.producer
        sends: list = []
        for event, (_stored, _future, owner) in zip(batch, claims):
            if owner:
                try:
                    # A deletion request names no generation: it is keyed by its user.
                    key = event.generation_id or event.user_id
                    sends.append((event, produce_event(producer, events.FEEDBACK_TOPIC, key, event)))
                except Exception as exc:  # noqa: BLE001 - e.g. buffer full: the send never started
                    sends.append((event, exc))
        return claims, sends, producer

    def _settle_all(self, sends: list, producer: KafkaProducer, timeout_s: float) -> None:
        failures = [exc for exc in (self._settle(event, sent, timeout_s) for event, sent in sends) if exc is not None]
        if failures:
            self._replace_failed_producer(producer, failures[0])

    def _settle(self, event: events_pb2.FeedbackEvent, sent, timeout_s: float) -> Exception | None:
        """Wait up to ``timeout_s`` for one ack and publish the answer (or the failure)
        to waiters; returns the failure, if any."""
        try:
            if isinstance(sent, Exception):
                raise sent
            meta = sent.get(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001
            log.warning("feedback not acknowledged", extra={"feedback_id": event.feedback_id, "error": str(exc)})
            self.answers.fail(
                event.feedback_id,
                Unavailable(
                    f"the broker did not acknowledge the feedback ({type(exc).__name__}: {exc}); retry with the same "
                    "feedback_id"
                ),
            )
            return exc
        receipt = FeedbackReceipt(event.feedback_id, False, time.time_ns(), meta.partition, meta.offset)
        self._produced.inc()
        self._accepted[event.WhichOneof("kind")].inc()
        self.answers.finish(event.feedback_id, receipt)
        return None

    def _replace_failed_producer(self, failed: KafkaProducer, exc: Exception) -> None:
        """After a failed send, build a new producer in the background (at most
        one per ``ack_timeout_s``) and use it from then on.

        kafka-python's idempotent producer can stay broken for good once the
        broker has forgotten its producer id (a broker that restarted empty,
        or producer state that expired): it either fails every send with a
        fatal error or retries them forever. A new producer gets a new id.
        During a plain outage this costs one new producer per ack timeout.
        Callers of the failed sends already got UNAVAILABLE and retry with the
        same feedback_id; the trainer's ledger drops any duplicate."""
        if self.new_producer is None:
            return
        with self._producer_lock:
            young = time.monotonic() - self._producer_built_at < self.ack_timeout_s
            if self.producer is not failed or self._rebuilding or young:
                return
            self._rebuilding = True
        reason = f"{type(exc).__name__}: {exc}"
        threading.Thread(target=self._rebuild, args=(failed, reason), name="producer-rebuild", daemon=True).start()

    def _rebuild(self, failed: KafkaProducer, reason: str) -> None:
        assert self.new_producer is not None
        try:
            fresh = self.new_producer()
        except Exception as exc:  # noqa: BLE001 - broker unreachable: a later failure tries again
            log.warning("cannot build a new Kafka producer yet", extra={"error": str(exc)})
            return
        finally:
            with self._producer_lock:
                self._rebuilding = False
                self._producer_built_at = time.monotonic()
        with self._producer_lock:
            self.producer = fresh
        PRODUCER_REPLACED.inc()
        log.warning("Kafka producer replaced after a failed send", extra={"error": reason})
        try:
            # Waits for the sends still in it; their callers wait as long for their acks.
            failed.close(timeout=self.ack_timeout_s)
        except KafkaError as exc:  # kafka-python raises from its flush when records are still pending
            log.warning("the replaced Kafka producer did not close cleanly", extra={"error": str(exc)})


def bind_user_id(event: events_pb2.FeedbackEvent, subject: str, field: str) -> None:
    """Feedback speaks for the user its caller's token names (the token's subject): an empty
    user_id becomes the subject, a different one is refused. Without a subject (a trusted
    backend relaying for its own users, or auth off) user_id is the caller's to set."""
    if not subject:
        return
    if not event.user_id:
        event.user_id = subject
    elif event.user_id != subject:
        raise PermissionDenied(
            field,
            f"is {event.user_id!r} but the caller's token speaks for {subject!r}; "
            "leave it empty (the gateway fills it in) or send that id",
        )


def _assign_defaults(event: events_pb2.FeedbackEvent) -> None:
    if not event.feedback_id:
        event.feedback_id = events.new_id()
    if not event.HasField("created_at"):
        event.created_at.FromNanoseconds(time.time_ns())
    fill_defaults(event)


def _receipt(stored: FeedbackReceipt | None, future: Future | None, owner: bool, timeout_s: float) -> FeedbackReceipt:
    """The answer for one claimed id (FirstAnswerCache.claim): the stored one, else the
    one its future gives within ``timeout_s``, marked duplicate unless this call produced it."""
    if stored is not None:
        return _as_duplicate(stored)
    assert future is not None, "a claim without a stored answer has a future"
    try:
        receipt = future.result(timeout=timeout_s)
    except Unavailable:  # the owner's failure is ours too
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. the owner is still waiting after our timeout
        raise _not_accepted(exc) from exc
    return receipt if owner else _as_duplicate(receipt)


def _not_accepted(exc: Exception) -> Unavailable:
    """The answer to a caller whose event's owner did not answer in time: retry with the same feedback_id."""
    return Unavailable(f"feedback not accepted yet: {type(exc).__name__}; retry with the same feedback_id")


async def _all_done(sends: list, timeout_s: float) -> None:
    """Return when every Kafka send in ``sends`` has completed (acked or failed), or after ``timeout_s``.

    kafka-python completes sends on its I/O thread; the last one wakes the event loop once,
    whatever the number of sends (one wake-up per call, not per event)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    remaining = [len(sends)]
    lock = threading.Lock()

    def one_done(_result_or_error) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            loop.call_soon_threadsafe(_set_done, done)

    for sent in sends:
        sent.add_both(one_done)
    timer = loop.call_later(timeout_s, _set_done, done)
    try:
        await done
    finally:
        timer.cancel()


def _set_done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _as_duplicate(receipt: FeedbackReceipt) -> FeedbackReceipt:
    FEEDBACK_DUPLICATES.inc()
    return FeedbackReceipt(receipt.feedback_id, True, receipt.accepted_at_ns, receipt.partition, receipt.offset)
