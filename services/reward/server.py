"""RewardService over gRPC, and the reward process's lifecycle.

The gRPC server starts first and answers health checks with NOT_SERVING
until the current reward version is loaded; then the update follower keeps
the version current.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.reward.config import RewardConfig
from services.reward.scorer import KIND, RewardScorer
from shared.errors import Unavailable
from shared.grpc.server import GrpcServer, ServiceBinding
from shared.models.store import ModelStore
from shared.models.update_follower import ModelUpdateFollower
from shared.proto.rlhf.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from shared.service_main import run_service

log = logging.getLogger(__name__)

SERVICE_NAME = "reward"


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, scorer: RewardScorer):
        self.scorer = scorer

    def Score(self, request, context):
        self.scorer.check_pair(request.prompt, request.response)
        scored = self.scorer.score([request.prompt], [request.response])
        return reward_pb2.ScoreResponse(
            score=scored.scores[0],
            model_version=scored.version,
            ensemble_mean=scored.means[0],
            ensemble_std=scored.stds[0],
            ensemble_size=scored.ensemble_size,
            conservative_k=scored.conservative_k,
        )

    def ScoreBatch(self, request, context):
        prompts = [item.prompt for item in request.items]
        responses = [item.response for item in request.items]
        self.scorer.check_batch(prompts, responses)
        scored = self.scorer.score(prompts, responses)
        return reward_pb2.ScoreBatchResponse(
            scores=scored.scores,
            model_version=scored.version,
            ensemble_means=scored.means,
            ensemble_stds=scored.stds,
            ensemble_size=scored.ensemble_size,
            conservative_k=scored.conservative_k,
        )

    def GetModelInfo(self, request, context):
        loaded = self.scorer.current
        if loaded is None:
            raise Unavailable("no reward version loaded yet; retry shortly")
        info = common_pb2.ModelInfo(
            kind=common_pb2.MODEL_KIND_REWARD,
            version=loaded.version,
            parent_version=loaded.manifest.parent_version,
            architecture=loaded.architecture,
            num_parameters=loaded.num_parameters,
            context_window=loaded.max_length,
            eval_metrics=loaded.manifest.eval_metrics,
            device=loaded.backend.device,
            backend=loaded.backend.name,
            limits=self.scorer.limits.as_dict(),
        )
        info.created_at.FromNanoseconds(int(loaded.manifest.created_at * 1e9))
        return info


class RewardServer:
    """The scorer, the update follower and the gRPC server around them."""

    def __init__(self, config: RewardConfig):
        self.config = config
        self.scorer = RewardScorer(ModelStore(config.model_store), config.limits, config.backend, config.threads)
        self.follower = (
            ModelUpdateFollower(
                KIND,
                self.scorer.store,
                lambda version, sha: self.scorer.load(version, sha),
                lambda: self.scorer.current.version if self.scorer.current else None,
                config.kafka,
                client_id="rlhf-reward",
                kafka_options=config.kafka_consumer_options(),
            )
            if config.watch_updates
            else None
        )
        self.grpc = GrpcServer(
            config,
            SERVICE_NAME,
            [
                ServiceBinding(
                    reward_pb2_grpc.add_RewardServiceServicer_to_server,
                    RewardServicer(self.scorer),
                    reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name,
                )
            ],
        )

    def start(self) -> int:
        port = self.grpc.start()
        # Follow updates before loading, so one published during the load is not missed.
        if self.follower is not None:
            self.follower.start()
        self.scorer.load_current()
        self.grpc.set_serving(True)
        return port

    def stop(self, grace_s: float | None = None) -> None:
        self.grpc.stop(grace_s)
        if self.follower is not None:
            self.follower.stop()


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(RewardConfig, SERVICE_NAME, RewardServer, argv)
