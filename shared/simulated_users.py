"""Driving simulated users against a running stack, for any application.

An application's simulator (demo/simulator.py, assistant/simulator.py) knows
its users, its prompts and its judge; what every one of them needs besides is
the same network plumbing, which lives here so applications (which may not
import each other) share one copy:

- :class:`SimulatedUsers`: the channels and stubs, worker threads that run
  until a deadline or a request budget is spent (optionally paced to a rate,
  backing off on errors), a sender thread that ships the queued feedback to the
  gateway in batches (SubmitFeedbackBatch), and start / running / join / stop.
  A subclass implements one request (:meth:`SimulatedUsers._serve_one`) and
  seeds each worker's random stream.
- :class:`DriverStats`: the thread-safe request and feedback counters the driver
  writes; an application's stats class adds what its display shows.
- :func:`sampling_params`: the SamplingParams of a simulated request.

What a simulated user sends, apart from the app's own judgement, is
shared/simulated_feedback.py.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Generic, Protocol, Self, TypeVar

import grpc

from shared.grpc.channels import ClientTLS, open_channel
from shared.proto.rlhf.v1 import common_pb2, events_pb2, feedback_pb2, feedback_pb2_grpc, policy_pb2, policy_pb2_grpc
from shared.simulated_feedback import feedback_kind

# Errors worth waiting out (the policy is swapping versions, a queue is full,
# a service is restarting); anything else is still counted and retried, but
# after a longer wait, and logged as the last error so a person sees it.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


class DriverSettings(Protocol):
    """The fields of an application's simulator config that the driver reads."""

    policy_addr: str  # may list several replicas (rlhf up --policy-replicas): round_robin over them
    feedback_addr: str
    auth_token: str
    tls: ClientTLS | None  # None: plaintext
    concurrency: int
    rate: float  # Generate calls per second across all workers; 0 = as fast as answered
    duration_s: float | None  # stop after this long ...
    requests: int | None  # ... or after this many Generate calls (whichever first)
    feedback_batch_size: int
    feedback_flush_s: float
    request_timeout_s: float


class DriverStats:
    """Thread-safe counters of requests and feedback, shared by the workers and a display."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.requests = 0
        self.request_errors = 0
        self.feedback_sent: dict[str, int] = {}
        self.feedback_errors = 0
        self.last_error = ""

    def record_request(self, ok: bool, error: str = "") -> None:
        with self._lock:
            self.requests += ok
            self.request_errors += not ok
            self.last_error = error or self.last_error

    def record_feedback(self, kinds: Sequence[str], accepted: bool, error: str = "") -> None:
        with self._lock:
            if accepted:
                for kind in kinds:
                    self.feedback_sent[kind] = self.feedback_sent.get(kind, 0) + 1
            else:
                self.feedback_errors += len(kinds)
                self.last_error = error or self.last_error

    @property
    def feedback_total(self) -> int:
        return sum(self.feedback_sent.values())


C = TypeVar("C", bound=DriverSettings)
S = TypeVar("S", bound=DriverStats)


class SimulatedUsers(ABC, Generic[C, S]):
    """Start with :meth:`start`, stop with :meth:`stop` (or let the duration /
    request budget run out; :meth:`join` waits). :attr:`stats` is live.

    A subclass sets :attr:`thread_prefix`, builds its users and prompts, then
    calls ``super().__init__`` (which opens the channels, so a bad config fails
    before any connection), and implements :meth:`_serve_one` (one request) and
    :meth:`_worker_rng` (each worker's seeded random stream)."""

    thread_prefix = "sim"  # workers are named "<prefix>-user-<i>", the sender "<prefix>-feedback"

    def __init__(self, config: C, stats: S):
        self.config = config
        self.stats = stats
        self._metadata = (("authorization", f"Bearer {config.auth_token}"),) if config.auth_token else ()
        self._stop = threading.Event()
        self._feedback: queue.Queue = queue.Queue()
        self._budget_lock = threading.Lock()
        self._next_slot = 0.0  # monotonic time of the next call when a rate is set
        self._requests_left = config.requests
        self._workers: list[threading.Thread] = []
        self._sender: threading.Thread | None = None
        self._policy_channel = open_channel(config.policy_addr, config.tls)
        self._feedback_channel = open_channel(config.feedback_addr, config.tls)
        self._policy = policy_pb2_grpc.PolicyServiceStub(self._policy_channel)
        self._gateway = feedback_pb2_grpc.FeedbackServiceStub(self._feedback_channel)

    # --- what an application implements ---------------------------------------------
    @abstractmethod
    def _worker_rng(self, index: int) -> random.Random:
        """Worker ``index``'s own random stream (deterministic given the app's seed)."""

    @abstractmethod
    def _serve_one(self, rng: random.Random) -> Iterable[events_pb2.FeedbackEvent]:
        """One user's request: pick a user and a prompt, ask through :meth:`_generate`
        (a grpc.RpcError from it is counted, and the request retried, by the driver),
        judge and record the answers; returns the feedback the user sends."""

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> Self:
        config = self.config
        deadline = time.monotonic() + config.duration_s if config.duration_s else None
        for i in range(config.concurrency):
            name = f"{self.thread_prefix}-user-{i}"
            worker = threading.Thread(target=self._work, args=(i, deadline), name=name, daemon=True)
            worker.start()
            self._workers.append(worker)
        self._sender = threading.Thread(target=self._send_feedback, name=f"{self.thread_prefix}-feedback", daemon=True)
        self._sender.start()
        return self

    def running(self) -> bool:
        return any(w.is_alive() for w in self._workers)

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the workers to finish, then flush the remaining feedback."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(None if end is None else max(0.0, end - time.monotonic()))
        self.stop()

    def stop(self, flush_timeout_s: float = 15.0) -> S:
        """Stop asking; send what feedback is queued; close the channels."""
        self._stop.set()
        for worker in self._workers:
            worker.join(self.config.request_timeout_s)
        if self._sender is not None:
            self._sender.join(flush_timeout_s)
        self._policy_channel.close()
        self._feedback_channel.close()
        return self.stats

    # --- users ------------------------------------------------------------------------
    def _claim_request(self) -> bool:
        with self._budget_lock:
            if self._requests_left is None:
                return True
            if self._requests_left <= 0:
                return False
            self._requests_left -= 1
            return True

    def _wait_for_slot(self) -> None:
        """With a rate, space calls 1/rate apart across all workers: real users
        arrive at a rate; a closed loop as fast as the policy answers would take
        the CPU the trainer needs when everything shares one machine."""
        rate = self.config.rate
        if rate <= 0:
            return
        with self._budget_lock:
            slot = max(time.monotonic(), self._next_slot)
            self._next_slot = slot + 1.0 / rate
        self._stop.wait(max(0.0, slot - time.monotonic()))

    def _work(self, index: int, deadline: float | None) -> None:
        rng = self._worker_rng(index)
        backoff_s = 0.2
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self._wait_for_slot()
            if self._stop.is_set() or not self._claim_request():
                return
            try:
                events = self._serve_one(rng)
            except grpc.RpcError as exc:
                code = exc.code()
                self.stats.record_request(False, f"Generate: {code.name if code else '?'}: {exc.details()}")
                # Give the claimed slot back: a failed call is not a served request.
                with self._budget_lock:
                    if self._requests_left is not None:
                        self._requests_left += 1
                self._stop.wait(backoff_s if code in TRANSIENT else 2 * backoff_s)
                backoff_s = min(5.0, backoff_s * 2)
                continue
            backoff_s = 0.2
            for event in events:
                self._feedback.put(event)

    def _generate(self, request: policy_pb2.GenerateRequest) -> policy_pb2.GenerateResponse:
        """Generate with the config's timeout and token; counts the request as served."""
        reply = self._policy.Generate(request, timeout=self.config.request_timeout_s, metadata=self._metadata)
        self.stats.record_request(True)
        return reply

    # --- feedback ---------------------------------------------------------------------
    def _send_feedback(self) -> None:
        config = self.config
        batch: list = []
        last_flush = time.monotonic()
        while True:
            workers_done = self._stop.is_set() or not self.running()
            try:
                batch.append(self._feedback.get(timeout=0.05))
            except queue.Empty:
                pass
            due = time.monotonic() - last_flush >= config.feedback_flush_s
            if batch and (len(batch) >= config.feedback_batch_size or due or workers_done):
                self._submit(batch)
                batch = []
                last_flush = time.monotonic()
            if workers_done and not batch and self._feedback.empty():
                return

    def _submit(self, batch: list) -> None:
        kinds = [feedback_kind(e) for e in batch]
        request = feedback_pb2.SubmitFeedbackBatchRequest(feedback=batch)
        for attempt in range(3):
            try:
                reply = self._gateway.SubmitFeedbackBatch(request, timeout=30.0, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                error = f"SubmitFeedbackBatch: {code.name if code else '?'}: {exc.details()}"
                if code in TRANSIENT and attempt < 2:
                    # Resending the same feedback_ids is safe: the gateway answers
                    # duplicates with the first receipt and produces nothing new.
                    time.sleep(0.5 * (attempt + 1))
                    continue
                self.stats.record_feedback(kinds, False, error)
                return
            # Every id is fresh, so a duplicate answer can only mean an earlier
            # attempt of this batch got through: it still counts as sent once.
            self.stats.record_feedback(kinds[: len(reply.results)], True)
            return


def sampling_params(n: int, max_new_tokens: int | None, temperature: float | None) -> common_pb2.SamplingParams:
    """``n`` answers per call; what is None is left to the server's (the model's) default."""
    sampling = common_pb2.SamplingParams(num_return_sequences=n)
    if max_new_tokens is not None:
        sampling.max_new_tokens = max_new_tokens
    if temperature is not None:
        sampling.temperature = temperature
    return sampling
