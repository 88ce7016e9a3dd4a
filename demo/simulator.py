"""The simulator's network side: worker threads that ask the policy service for
answers over gRPC and a sender that ships the users' feedback to the gateway in
batches (SubmitFeedbackBatch, for throughput).

The user model itself (who prefers what, how noisy) is demo/simulation.py.
Used by `rlhf simulate`, `rlhf demo` and the end-to-end test.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from dataclasses import dataclass, field

import grpc

from demo.simulation import (
    Answer,
    PreferenceFunction,
    SimulationStats,
    feedback_kind,
    make_population,
    react,
    utility_of,
    weighted_axes_utility,
)
from demo.user_feedback import FeedbackMix, answers_to_show
from demo.world import build_prompts, judge
from shared.grpc.channels import ClientTLS, open_channel
from shared.proto.rlhf.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc, policy_pb2, policy_pb2_grpc

# Errors worth waiting out (the policy is swapping versions, a queue is full,
# a service is restarting); anything else is still counted and retried, but
# logged as the last error so a person sees it in the live line.
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class SimulatorConfig:
    policy_addr: str
    feedback_addr: str
    auth_token: str = ""
    tls: ClientTLS | None = None  # None: plaintext
    users: int = 50
    concurrency: int = 4
    rate: float = 0.0  # Generate calls per second across all workers; 0 = as fast as answered
    duration_s: float | None = None  # stop after this long ...
    requests: int | None = None  # ... or after this many Generate calls (whichever first)
    seed: int = 0
    mean_noise: float = 0.1
    prompt_split: str = "all"  # "all", "train" or "heldout"
    max_new_tokens: int | None = None  # None = the server's default
    temperature: float | None = None
    feedback_batch_size: int = 64
    feedback_flush_s: float = 0.5
    request_timeout_s: float = 60.0
    preference: PreferenceFunction = field(default=weighted_axes_utility)
    feedback_mix: FeedbackMix = field(default_factory=FeedbackMix)


class Simulator:
    """Start with :meth:`start`, stop with :meth:`stop` (or let --duration /
    --requests run out; :meth:`join` waits). :attr:`stats` is live."""

    def __init__(self, config: SimulatorConfig, stats: SimulationStats | None = None):
        self.config = config
        self.stats = stats or SimulationStats()
        self.users = make_population(config.users, config.seed, mean_noise=config.mean_noise)
        prompts = build_prompts()
        if config.prompt_split != "all":
            prompts = tuple(p for p in prompts if p.split == config.prompt_split)
        if not prompts:
            raise ValueError(f"no prompts in split {config.prompt_split!r}")
        self.prompts = prompts
        self._metadata = (("authorization", f"Bearer {config.auth_token}"),) if config.auth_token else ()
        self._stop = threading.Event()
        self._feedback: queue.Queue = queue.Queue()
        self._budget_lock = threading.Lock()
        self._next_slot = 0.0  # monotonic time of the next call when --rate is set
        self._requests_left = config.requests
        self._workers: list[threading.Thread] = []
        self._sender: threading.Thread | None = None
        # policy_addr may list several replicas (rlhf up --policy-replicas): round_robin over them.
        self._policy_channel = open_channel(config.policy_addr, config.tls)
        self._feedback_channel = open_channel(config.feedback_addr, config.tls)
        self._policy = policy_pb2_grpc.PolicyServiceStub(self._policy_channel)
        self._gateway = feedback_pb2_grpc.FeedbackServiceStub(self._feedback_channel)

    # --- lifecycle --------------------------------------------------------------
    def start(self) -> Simulator:
        deadline = time.monotonic() + self.config.duration_s if self.config.duration_s else None
        for i in range(self.config.concurrency):
            worker = threading.Thread(target=self._work, args=(i, deadline), name=f"sim-user-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._sender = threading.Thread(target=self._send_feedback, name="sim-feedback", daemon=True)
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

    def stop(self, flush_timeout_s: float = 15.0) -> SimulationStats:
        """Stop asking; send what feedback is queued; close the channels."""
        self._stop.set()
        for worker in self._workers:
            worker.join(self.config.request_timeout_s)
        if self._sender is not None:
            self._sender.join(flush_timeout_s)
        self._policy_channel.close()
        self._feedback_channel.close()
        return self.stats

    # --- users ------------------------------------------------------------------
    def _claim_request(self) -> bool:
        with self._budget_lock:
            if self._requests_left is None:
                return True
            if self._requests_left <= 0:
                return False
            self._requests_left -= 1
            return True

    def _wait_for_slot(self) -> None:
        """With --rate, space calls 1/rate apart across all workers: real users
        arrive at a rate; a closed loop as fast as the policy answers would take
        the CPU the trainer needs when everything shares one machine."""
        if self.config.rate <= 0:
            return
        with self._budget_lock:
            slot = max(time.monotonic(), self._next_slot)
            self._next_slot = slot + 1.0 / self.config.rate
        self._stop.wait(max(0.0, slot - time.monotonic()))

    def _work(self, index: int, deadline: float | None) -> None:
        rng = random.Random(f"{self.config.seed}:{index}")
        backoff_s = 0.2
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self._wait_for_slot()
            if self._stop.is_set() or not self._claim_request():
                return
            user = rng.choice(self.users)
            prompt = rng.choice(self.prompts)
            shown = answers_to_show(user.compare_rate, self.config.feedback_mix, rng)
            try:
                reply = self._generate(user.user_id, prompt.text, shown)
            except grpc.RpcError as exc:
                code = exc.code()
                self.stats.record_request(False, f"Generate: {code.name if code else '?'}: {exc.details()}")
                # Give the claimed slot back: a failed call is not a served request.
                with self._budget_lock:
                    if self._requests_left is not None:
                        self._requests_left += 1
                self._stop.wait(backoff_s if code in _TRANSIENT else 2 * backoff_s)
                backoff_s = min(5.0, backoff_s * 2)
                continue
            backoff_s = 0.2
            self.stats.record_request(True)
            answers = []
            for completion in reply.completions:
                answer = Answer(completion.generation_id, completion.text, judge(prompt, completion.text))
                utility = utility_of(self.config.preference, user, prompt, answer)
                self.stats.record_response(reply.model_version, prompt.text, answer.text, answer.verdict, utility)
                answers.append(answer)
            for event in react(user, prompt, answers, rng, self.config.preference, self.config.feedback_mix):
                self._feedback.put(event)

    def _generate(self, user_id: str, prompt_text: str, n: int) -> policy_pb2.GenerateResponse:
        sampling = common_pb2.SamplingParams(num_return_sequences=n)
        if self.config.max_new_tokens is not None:
            sampling.max_new_tokens = self.config.max_new_tokens
        if self.config.temperature is not None:
            sampling.temperature = self.config.temperature
        request = policy_pb2.GenerateRequest(
            prompt=prompt_text, sampling=sampling, user_id=user_id, metadata={"app": "rlhf-simulate"}
        )
        return self._policy.Generate(request, timeout=self.config.request_timeout_s, metadata=self._metadata)

    # --- feedback ---------------------------------------------------------------
    def _send_feedback(self) -> None:
        batch: list = []
        last_flush = time.monotonic()
        while True:
            workers_done = self._stop.is_set() or not self.running()
            try:
                batch.append(self._feedback.get(timeout=0.05))
            except queue.Empty:
                pass
            due = time.monotonic() - last_flush >= self.config.feedback_flush_s
            if batch and (len(batch) >= self.config.feedback_batch_size or due or workers_done):
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
                if code in _TRANSIENT and attempt < 2:
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
