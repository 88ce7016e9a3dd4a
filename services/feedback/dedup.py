"""The gateway's idempotency cache: the first answer for each feedback_id, kept for a
while (bounded, expiring), and the submissions in flight, single-flighted so one id
is produced once. Across replicas and restarts the trainer's ledger, which
deduplicates by feedback_id, is the final guarantee."""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from typing import Generic, TypeVar

Answer = TypeVar("Answer")


class FirstAnswerCache(Generic[Answer]):
    """First answers by feedback_id (bounded, expiring) plus the submissions
    in flight, so a duplicate either gets the stored answer or waits for the
    one being produced instead of producing again."""

    def __init__(self, ttl_s: float, capacity: int):
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._answers: collections.OrderedDict[str, tuple[float, Answer]] = collections.OrderedDict()
        self._in_flight: dict[str, Future] = {}
        self._lock = threading.Lock()

    def claim(self, feedback_id: str) -> tuple[Answer | None, Future | None, bool]:
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

    def finish(self, feedback_id: str, receipt: Answer) -> None:
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
