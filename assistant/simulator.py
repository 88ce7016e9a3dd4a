"""The assistant's simulated users on the network: worker threads ask the policy
service (gRPC Generate, the question as a chat, one to four answers per call) and
a sender ships the users' feedback to the gateway in batches (SubmitFeedbackBatch).
The same public API calls the demo's simulator makes; used by
`rlhf simulate --app assistant`."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from assistant.dataset import Item, items_in
from assistant.feedback import FeedbackMix, answers_to_show, assess, feedback_kind, react
from assistant.users import PreferenceFunction, default_utility, make_population
from shared.grpc.channels import ClientTLS, open_channel
from shared.proto.rlhf.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc, policy_pb2, policy_pb2_grpc

_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class AssistantSimulatorConfig:
    policy_addr: str
    feedback_addr: str
    auth_token: str = ""
    tls: ClientTLS | None = None
    users: int = 50
    concurrency: int = 4
    rate: float = 0.0  # Generate calls per second across all workers; 0 = as fast as answered
    duration_s: float | None = None
    requests: int | None = None
    seed: int = 0
    mean_noise: float = 0.1
    prompt_split: str = "all"  # "all", "train" or "heldout"
    max_new_tokens: int | None = None
    temperature: float | None = None
    chat: bool | None = None  # send messages (True) or raw prompt text (False); None: ask GetModelInfo
    feedback_batch_size: int = 64
    feedback_flush_s: float = 0.5
    request_timeout_s: float = 120.0
    preference: PreferenceFunction = field(default=default_utility)
    feedback_mix: FeedbackMix = field(default_factory=FeedbackMix)


@dataclass
class VersionTally:
    responses: int = 0
    correct: int = 0
    clean: int = 0
    good: int = 0
    utility_sum: float = 0.0
    words_sum: int = 0


class AssistantStats:
    """Thread-safe counters for the live line and the final table."""

    def __init__(self, recent_window: int = 200):
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.requests = 0
        self.request_errors = 0
        self.feedback_sent: dict[str, int] = {}
        self.feedback_errors = 0
        self.last_error = ""
        self.by_version: dict[str, VersionTally] = {}
        self.recent: deque[tuple[str, bool]] = deque(maxlen=recent_window)

    def record_request(self, ok: bool, error: str = "") -> None:
        with self._lock:
            self.requests += ok
            self.request_errors += not ok
            self.last_error = error or self.last_error

    def record_answer(self, version: str, answer) -> None:
        with self._lock:
            t = self.by_version.setdefault(version, VersionTally())
            v = answer.verdict
            t.responses += 1
            t.correct += v.correct
            t.clean += v.clean
            t.good += v.good
            t.utility_sum += answer.utility
            t.words_sum += v.words
            self.recent.append((version, v.good))

    def record_feedback(self, kinds: list[str], accepted: bool, error: str = "") -> None:
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

    def tallies(self) -> dict[str, VersionTally]:
        with self._lock:
            return {k: VersionTally(**vars(t)) for k, t in self.by_version.items()}

    def live_line(self) -> str:
        with self._lock:
            recent = list(self.recent)
        per: dict[str, list[int]] = {}
        for version, good in recent:
            n_good = per.setdefault(version, [0, 0])
            n_good[0] += 1
            n_good[1] += good
        versions = "  ".join(f"{v}: {g / n:.0%} (n={n})" for v, (n, g) in sorted(per.items())) or "-"
        elapsed = max(1e-9, time.monotonic() - self.started)
        line = (
            f"requests {self.requests} ({self.requests / elapsed:.1f}/s)  feedback {self.feedback_total}"
            f"  recent correct & clean {versions}"
        )
        if self.request_errors or self.feedback_errors:
            line += f"  [yellow]errors {self.request_errors}+{self.feedback_errors}: {self.last_error[:80]}[/yellow]"
        return line

    def table(self, title: str = "assistant answers by policy version"):
        from rich.table import Table

        table = Table(title=title)
        for column in ("version", "responses", "correct", "clean", "correct & clean", "user utility", "words"):
            table.add_column(column, justify="left" if column == "version" else "right")
        for version, t in sorted(self.tallies().items()):
            n = max(1, t.responses)
            table.add_row(
                version,
                str(t.responses),
                f"{t.correct / n:.1%}",
                f"{t.clean / n:.1%}",
                f"{t.good / n:.1%}",
                f"{t.utility_sum / n:.3f}",
                f"{t.words_sum / n:.1f}",
            )
        return table


class AssistantSimulator:
    """Start with :meth:`start`, stop with :meth:`stop` (or let duration / requests run out)."""

    def __init__(self, config: AssistantSimulatorConfig, stats: AssistantStats | None = None):
        self.config = config
        self.stats = stats or AssistantStats()
        self.users = make_population(config.users, config.seed, mean_noise=config.mean_noise)
        self.items: tuple[Item, ...] = items_in(config.prompt_split)
        if not self.items:
            raise ValueError(f"no questions in split {config.prompt_split!r}")
        self._metadata = (("authorization", f"Bearer {config.auth_token}"),) if config.auth_token else ()
        self._stop = threading.Event()
        self._feedback: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._requests_left = config.requests
        self._workers: list[threading.Thread] = []
        self._sender: threading.Thread | None = None
        self._policy_channel = open_channel(config.policy_addr, config.tls)
        self._feedback_channel = open_channel(config.feedback_addr, config.tls)
        self._policy = policy_pb2_grpc.PolicyServiceStub(self._policy_channel)
        self._gateway = feedback_pb2_grpc.FeedbackServiceStub(self._feedback_channel)
        self.chat = config.chat

    def start(self) -> AssistantSimulator:
        if self.chat is None:
            self.chat = self._model_has_chat_template()
        deadline = time.monotonic() + self.config.duration_s if self.config.duration_s else None
        for i in range(self.config.concurrency):
            worker = threading.Thread(target=self._work, args=(i, deadline), name=f"asst-user-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._sender = threading.Thread(target=self._send_feedback, name="asst-feedback", daemon=True)
        self._sender.start()
        return self

    def running(self) -> bool:
        return any(w.is_alive() for w in self._workers)

    def join(self, timeout_s: float | None = None) -> None:
        end = None if timeout_s is None else time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(None if end is None else max(0.0, end - time.monotonic()))
        self.stop()

    def stop(self, flush_timeout_s: float = 15.0) -> AssistantStats:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.config.request_timeout_s)
        if self._sender is not None:
            self._sender.join(flush_timeout_s)
        self._policy_channel.close()
        self._feedback_channel.close()
        return self.stats

    def _model_has_chat_template(self) -> bool:
        """Chat messages if the served model has a chat template; raw text otherwise (or if unknown)."""
        try:
            info = self._policy.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10.0, metadata=self._metadata)
        except grpc.RpcError:
            return True
        return bool(info.has_chat_template)

    def _claim(self) -> bool:
        with self._lock:
            if self._requests_left is None:
                return True
            if self._requests_left <= 0:
                return False
            self._requests_left -= 1
            return True

    def _give_back(self) -> None:
        with self._lock:
            if self._requests_left is not None:
                self._requests_left += 1

    def _wait_for_slot(self) -> None:
        if self.config.rate <= 0:
            return
        with self._lock:
            slot = max(time.monotonic(), self._next_slot)
            self._next_slot = slot + 1.0 / self.config.rate
        self._stop.wait(max(0.0, slot - time.monotonic()))

    def _work(self, index: int, deadline: float | None) -> None:
        rng = random.Random(f"assistant:{self.config.seed}:{index}")
        backoff_s = 0.2
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self._wait_for_slot()
            if self._stop.is_set() or not self._claim():
                return
            user, item = rng.choice(self.users), rng.choice(self.items)
            try:
                reply = self._generate(user.user_id, item, answers_to_show(user, self.config.feedback_mix, rng))
            except grpc.RpcError as exc:
                code = exc.code()
                self.stats.record_request(False, f"Generate: {code.name if code else '?'}: {exc.details()}")
                self._give_back()
                self._stop.wait(backoff_s if code in _TRANSIENT else 2 * backoff_s)
                backoff_s = min(5.0, backoff_s * 2)
                continue
            backoff_s = 0.2
            self.stats.record_request(True)
            answers = [assess(user, item, c.generation_id, c.text, self.config.preference) for c in reply.completions]
            for answer in answers:
                self.stats.record_answer(reply.model_version, answer)
            for event in react(user, item, answers, rng, self.config.feedback_mix):
                self._feedback.put(event)

    def _generate(self, user_id: str, item: Item, n: int) -> policy_pb2.GenerateResponse:
        sampling = common_pb2.SamplingParams(num_return_sequences=n)
        if self.config.max_new_tokens is not None:
            sampling.max_new_tokens = self.config.max_new_tokens
        if self.config.temperature is not None:
            sampling.temperature = self.config.temperature
        request = policy_pb2.GenerateRequest(
            sampling=sampling, user_id=user_id, metadata={"app": "rlhf-simulate-assistant", "item_id": item.id}
        )
        if self.chat:
            request.messages.extend(common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in item.messages)
        else:
            request.prompt = item.question
        return self._policy.Generate(request, timeout=self.config.request_timeout_s, metadata=self._metadata)

    def _send_feedback(self) -> None:
        batch: list = []
        last_flush = time.monotonic()
        while True:
            done = self._stop.is_set() or not self.running()
            try:
                batch.append(self._feedback.get(timeout=0.05))
            except queue.Empty:
                pass
            due = time.monotonic() - last_flush >= self.config.feedback_flush_s
            if batch and (len(batch) >= self.config.feedback_batch_size or due or done):
                self._submit(batch)
                batch, last_flush = [], time.monotonic()
            if done and not batch and self._feedback.empty():
                return

    def _submit(self, batch: list) -> None:
        kinds = [feedback_kind(e) for e in batch]
        request = feedback_pb2.SubmitFeedbackBatchRequest(feedback=batch)
        for attempt in range(3):
            try:
                reply = self._gateway.SubmitFeedbackBatch(request, timeout=30.0, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in _TRANSIENT and attempt < 2:
                    time.sleep(0.5 * (attempt + 1))  # the same feedback_ids again: the gateway deduplicates
                    continue
                self.stats.record_feedback(kinds, False, f"SubmitFeedbackBatch: {code.name if code else '?'}")
                return
            self.stats.record_feedback(kinds[: len(reply.results)], True)
            return
