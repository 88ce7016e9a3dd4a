"""RewardService.ScoreBatch as a plain ``(prompts, responses) -> scores`` callable.

The training core takes any such callable, so it never imports grpc; this
adapter adds what a network call needs: chunks no larger than the server's
batch limit, a deadline per call, a bearer token (an application token is
enough), TLS when configured, and retries with backoff on
the transient codes (the reward service is briefly UNAVAILABLE while it
restarts, and answers RESOURCE_EXHAUSTED when overloaded).

The score it returns is the one the service serves as ``score``: for an
ensemble of reward heads, the conservative score (mean - k * std), which is
what PPO is paid and the gate compares; :meth:`RewardClient.score_ensemble`
also gives the heads' mean and std, and :attr:`RewardClient.score_used` says
which score the last call returned.

With a ``stop`` token (services.trainer.stop_token) a call in flight, or a
retry's backoff, ends as soon as the trainer is asked to stop: the call is
cancelled and TrainingInterrupted raised, so a slow or unreachable reward
service never holds a shutdown for its deadline times the retries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from services.trainer.stop_token import StopToken, TrainingInterrupted
from shared.grpc.channels import ClientTLS, open_channel
from shared.models.reward.ensemble import describe_score
from shared.proto.rlhf.v1 import reward_pb2, reward_pb2_grpc

log = logging.getLogger(__name__)

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


@dataclass(frozen=True)
class ScoredPairs:
    """Per pair: the served score (conservative for an ensemble), the heads' mean and std."""

    scores: list[float]
    means: list[float]
    stds: list[float]


class RewardScoringError(RuntimeError):
    """The reward service did not answer after every retry, or refused the request."""


class RewardClient:
    """Callable[[list[str], list[str]], list[float]] over gRPC."""

    def __init__(
        self,
        address: str,
        *,
        token: str = "",
        tls: ClientTLS | None = None,
        timeout_s: float = 30.0,
        batch_size: int = 64,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_message_bytes: int = 16 * 1024 * 1024,
        empty_response_score: float = -10.0,
        stop: StopToken | None = None,
    ):
        self.address = address
        self.stop = stop or StopToken()
        # The reward service refuses empty responses (INVALID_ARGUMENT: an app
        # sending one has a bug), but a policy can sample EOS first. Such a
        # response gets this score here, without a call: low, so PPO is never
        # paid for saying nothing, and fixed, so no reward model is asked to
        # score text it never saw.
        self.empty_response_score = empty_response_score
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # Several reward replicas (host1:port1,host2:port2, or a name with several
        # addresses) are spread over with gRPC's round_robin (shared.grpc.channels).
        self.channel = open_channel(
            address,
            tls,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Every address the name resolves to (a headless Service: each reward replica), in turn.
                ("grpc.lb_policy_name", "round_robin"),
            ],
        )
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)
        self.last_version = ""  # reward version that scored the last chunk
        self.last_ensemble_size = 1  # heads of that version
        self.last_conservative_k = 0.0

    @property
    def score_used(self) -> str:
        """Which score the last call returned (shared.models.reward.ensemble.describe_score)."""
        return describe_score(self.last_ensemble_size, self.last_conservative_k)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self.score_ensemble(prompts, responses).scores

    def score_ensemble(self, prompts: Sequence[str], responses: Sequence[str]) -> ScoredPairs:
        """Scores, heads' means and stds of (prompt, response) pairs, in order."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        scores = [self.empty_response_score] * len(prompts)
        means, stds = list(scores), [0.0] * len(prompts)
        scored = [i for i, r in enumerate(responses) if r.strip()]
        for start in range(0, len(scored), self.batch_size):
            chunk = scored[start : start + self.batch_size]
            items = [reward_pb2.ScoreRequest(prompt=prompts[i], response=responses[i]) for i in chunk]
            reply = self._score_chunk(items)
            # A server from before ensembles sends no means/stds: its score is a single head's.
            chunk_means = list(reply.ensemble_means) or list(reply.scores)
            chunk_stds = list(reply.ensemble_stds) or [0.0] * len(chunk)
            for j, i in enumerate(chunk):
                scores[i], means[i], stds[i] = reply.scores[j], chunk_means[j], chunk_stds[j]
        return ScoredPairs(scores, means, stds)

    def _score_chunk(self, items: list[reward_pb2.ScoreRequest]) -> reward_pb2.ScoreBatchResponse:
        request = reward_pb2.ScoreBatchRequest(items=items)
        for attempt in range(1, self.attempts + 1):
            try:
                reply = self._call(request)
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRYABLE or attempt == self.attempts:
                    raise RewardScoringError(f"reward service at {self.address}: {code.name}: {exc.details()}") from exc
                log.warning(
                    "reward scoring failed; retrying",
                    extra={"code": code.name, "attempt": attempt, "address": self.address},
                )
                if self.stop.wait(self.backoff_s * 2 ** (attempt - 1)):
                    raise TrainingInterrupted("scoring by the reward service (between retries)") from None
                continue
            if len(reply.scores) != len(items) or len(reply.ensemble_means) not in (0, len(items)):
                raise RewardScoringError(f"reward service returned {len(reply.scores)} scores for {len(items)} pairs")
            self.last_version = reply.model_version
            self.last_ensemble_size = max(1, reply.ensemble_size)
            self.last_conservative_k = reply.conservative_k
            return reply
        raise AssertionError("unreachable")

    def _call(self, request: reward_pb2.ScoreBatchRequest) -> reward_pb2.ScoreBatchResponse:
        """One ScoreBatch call, cancelled if the stop token is set while it waits."""
        call = self.stub.ScoreBatch.future(request, timeout=self.timeout_s, metadata=self.metadata, wait_for_ready=True)
        done = threading.Event()
        call.add_done_callback(lambda _call: done.set())
        while not done.wait(0.2):  # a stop request is noticed within 0.2 s
            if self.stop.is_set():
                call.cancel()
                raise TrainingInterrupted("scoring by the reward service (a call in flight, cancelled)")
        return call.result()

    def close(self) -> None:
        self.channel.close()
