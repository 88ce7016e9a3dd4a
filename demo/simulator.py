"""The simulator's network side: worker threads that ask the policy service for
answers over gRPC and a sender that ships the users' feedback to the gateway in
batches (SubmitFeedbackBatch, for throughput). The threads, the budget and the
sender are the platform's (shared/simulated_users.py); this module asks the demo
world's prompts and judges the answers.

The user model itself (who prefers what, how noisy) is demo/simulation.py.
Used by `rlhf simulate`, `rlhf demo` and the end-to-end test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from demo.simulation import (
    Answer,
    PreferenceFunction,
    SimulationStats,
    make_population,
    react,
    utility_of,
    weighted_axes_utility,
)
from demo.user_feedback import FeedbackMix, answers_to_show
from demo.world import build_prompts, judge
from shared.grpc.channels import ClientTLS
from shared.proto.rlhf.v1 import events_pb2, policy_pb2
from shared.simulated_users import SimulatedUsers, sampling_params


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


class Simulator(SimulatedUsers[SimulatorConfig, SimulationStats]):
    """Start with :meth:`start`, stop with :meth:`stop` (or let --duration /
    --requests run out; :meth:`join` waits). :attr:`stats` is live."""

    thread_prefix = "sim"

    def __init__(self, config: SimulatorConfig, stats: SimulationStats | None = None):
        self.users = make_population(config.users, config.seed, mean_noise=config.mean_noise)
        prompts = build_prompts()
        if config.prompt_split != "all":
            prompts = tuple(p for p in prompts if p.split == config.prompt_split)
        if not prompts:
            raise ValueError(f"no prompts in split {config.prompt_split!r}")
        self.prompts = prompts
        super().__init__(config, stats or SimulationStats())

    def _worker_rng(self, index: int) -> random.Random:
        return random.Random(f"{self.config.seed}:{index}")

    def _serve_one(self, rng: random.Random) -> list[events_pb2.FeedbackEvent]:
        user = rng.choice(self.users)
        prompt = rng.choice(self.prompts)
        shown = answers_to_show(user.compare_rate, self.config.feedback_mix, rng)
        reply = self._generate(self._request(user.user_id, prompt.text, shown))
        answers = []
        for completion in reply.completions:
            answer = Answer(completion.generation_id, completion.text, judge(prompt, completion.text))
            utility = utility_of(self.config.preference, user, prompt, answer)
            self.stats.record_response(reply.model_version, prompt.text, answer.text, answer.verdict, utility)
            answers.append(answer)
        return react(user, prompt, answers, rng, self.config.preference, self.config.feedback_mix)

    def _request(self, user_id: str, prompt_text: str, n: int) -> policy_pb2.GenerateRequest:
        sampling = sampling_params(n, self.config.max_new_tokens, self.config.temperature)
        return policy_pb2.GenerateRequest(
            prompt=prompt_text, sampling=sampling, user_id=user_id, metadata={"app": "rlhf-simulate"}
        )
