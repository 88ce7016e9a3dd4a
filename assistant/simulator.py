"""The assistant's simulated users on the network: worker threads ask the policy
service (gRPC Generate, the question as a chat, one to four answers per call) and
a sender ships the users' feedback to the gateway in batches (SubmitFeedbackBatch).
The threads, the request budget and the sender are the platform's
(shared/simulated_users.py), as for the demo's simulator; used by
`rlhf simulate --app assistant`."""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from assistant.dataset import Item, items_in
from assistant.feedback import FeedbackMix, answers_to_show, assess, react
from assistant.users import PreferenceFunction, default_utility, make_population
from shared.grpc.channels import ClientTLS
from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2
from shared.simulated_users import DriverStats, SimulatedUsers, sampling_params


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
    utility_sq_sum: float = 0.0  # for the standard error of the mean utility
    words_sum: int = 0


@dataclass(frozen=True)
class ServedAnswer:
    """One answer a user saw, kept for the live view's per-interval points."""

    at: float  # time.monotonic() when judged
    model_version: str
    prompt: str
    response: str
    utility: float
    correct: bool
    clean: bool
    words: int


class AssistantStats(DriverStats):
    """Thread-safe counters for the live line and the final table: the driver's
    request and feedback counts, and how each version's answers were judged."""

    def __init__(self, recent_window: int = 200):
        super().__init__()
        self.by_version: dict[str, VersionTally] = {}
        self.recent: deque[ServedAnswer] = deque(maxlen=recent_window)

    def record_answer(self, version: str, answer, prompt: str = "") -> None:
        with self._lock:
            t = self.by_version.setdefault(version, VersionTally())
            v = answer.verdict
            t.responses += 1
            t.correct += v.correct
            t.clean += v.clean
            t.good += v.good
            t.utility_sum += answer.utility
            t.utility_sq_sum += answer.utility**2
            t.words_sum += v.words
            self.recent.append(
                ServedAnswer(
                    time.monotonic(), version, prompt, answer.text, answer.utility, v.correct, v.clean, v.words
                )
            )

    def snapshot_recent(self) -> list[ServedAnswer]:
        with self._lock:
            return list(self.recent)

    def tallies(self) -> dict[str, VersionTally]:
        with self._lock:
            return {k: VersionTally(**vars(t)) for k, t in self.by_version.items()}

    def live_line(self) -> str:
        with self._lock:
            recent = list(self.recent)
        per: dict[str, list[int]] = {}
        for served in recent:
            n_good = per.setdefault(served.model_version, [0, 0])
            n_good[0] += 1
            n_good[1] += served.correct and served.clean
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


class AssistantSimulator(SimulatedUsers[AssistantSimulatorConfig, AssistantStats]):
    """Start with :meth:`start`, stop with :meth:`stop` (or let duration / requests run out)."""

    thread_prefix = "asst"

    def __init__(self, config: AssistantSimulatorConfig, stats: AssistantStats | None = None):
        self.users = make_population(config.users, config.seed, mean_noise=config.mean_noise)
        self.items: tuple[Item, ...] = items_in(config.prompt_split)
        if not self.items:
            raise ValueError(f"no questions in split {config.prompt_split!r}")
        super().__init__(config, stats or AssistantStats())
        self.chat = config.chat

    def start(self) -> AssistantSimulator:
        # Asked once, before any user: every request is sent the same way.
        if self.chat is None:
            self.chat = self._model_has_chat_template()
        return super().start()

    def _model_has_chat_template(self) -> bool:
        """Chat messages if the served model has a chat template; raw text otherwise (or if unknown)."""
        try:
            info = self._policy.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10.0, metadata=self._metadata)
        except grpc.RpcError:
            return True
        return bool(info.has_chat_template)

    def _worker_rng(self, index: int) -> random.Random:
        return random.Random(f"assistant:{self.config.seed}:{index}")

    def _serve_one(self, rng: random.Random) -> list[events_pb2.FeedbackEvent]:
        user, item = rng.choice(self.users), rng.choice(self.items)
        reply = self._generate(self._request(user.user_id, item, answers_to_show(user, self.config.feedback_mix, rng)))
        answers = [assess(user, item, c.generation_id, c.text, self.config.preference) for c in reply.completions]
        for answer in answers:
            self.stats.record_answer(reply.model_version, answer, item.question)
        return react(user, item, answers, rng, self.config.feedback_mix)

    def _request(self, user_id: str, item: Item, n: int) -> policy_pb2.GenerateRequest:
        sampling = sampling_params(n, self.config.max_new_tokens, self.config.temperature)
        request = policy_pb2.GenerateRequest(
            sampling=sampling, user_id=user_id, metadata={"app": "rlhf-simulate-assistant", "item_id": item.id}
        )
        if self.chat:
            request.messages.extend(common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in item.messages)
        else:
            request.prompt = item.question
        return request
