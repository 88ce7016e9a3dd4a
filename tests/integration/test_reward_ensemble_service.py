"""The reward service serving an ensemble version: the conservative score as
``score``, the heads' mean and std beside it, over real gRPC, on both backends."""

from __future__ import annotations

import grpc
import pytest

from services.reward.config import RewardConfig
from services.reward.scorer import load_reward_version
from services.reward.server import RewardServer
from shared.models.reward.format import save_reward_model
from shared.models.reward.minilm import new_reward_model
from shared.models.reward.onnx_export import export_verified_onnx
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import reward_pb2, reward_pb2_grpc

PAIRS = [
    ("How do I boil an egg?", "Boil it for nine minutes."),
    ("Capital of France?", "Paris."),
    ("Water a fern?", "Keep the soil damp."),
]
K = 0.5


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = ModelStore(tmp_path_factory.mktemp("store"))
    model, tokenizer = new_reward_model(seed=4, max_length=48, ensemble_size=3, conservative_k=K)

    def fill(path):
        save_reward_model(model, tokenizer, path)
        assert export_verified_onnx(model, tokenizer, path).backend == "onnx"

    store.write_version("reward", fill, eval_metrics={"accuracy": 0.5})
    return store


@pytest.fixture(scope="module")
def stub(broker, store):
    config = RewardConfig(
        port=0, metrics_port=-1, kafka=broker.bootstrap, model_store=str(store.root), watch_updates=False
    )
    server = RewardServer(config)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield reward_pb2_grpc.RewardServiceStub(channel), port
    channel.close()
    server.stop(2)


def test_score_batch_serves_the_conservative_score_with_the_heads_mean_and_std(stub, store):
    rpc, _ = stub
    reply = rpc.ScoreBatch(
        reward_pb2.ScoreBatchRequest(items=[reward_pb2.ScoreRequest(prompt=p, response=r) for p, r in PAIRS])
    )
    assert (reply.ensemble_size, reply.conservative_k) == (3, K)
    assert len(reply.ensemble_means) == len(reply.ensemble_stds) == len(PAIRS)
    assert all(s > 0 for s in reply.ensemble_stds)  # three differently seeded heads disagree
    for score, mean, std in zip(reply.scores, reply.ensemble_means, reply.ensemble_stds):
        assert score == pytest.approx(mean - K * std, abs=1e-5)
    # The torch path computes the same members and the same combination.
    eager = load_reward_version(store, "v1", "torch", threads=1).score_ensemble(*zip(*PAIRS))
    assert list(reply.scores) == pytest.approx(eager.scores, abs=1e-4)
    assert list(reply.ensemble_means) == pytest.approx(eager.means, abs=1e-4)
    single = rpc.Score(reward_pb2.ScoreRequest(prompt=PAIRS[0][0], response=PAIRS[0][1]))
    assert (single.score, single.ensemble_mean, single.ensemble_std) == pytest.approx(
        (reply.scores[0], reply.ensemble_means[0], reply.ensemble_stds[0]), abs=1e-5
    )
    assert single.ensemble_size == 3 and single.model_version == "v1"


def test_the_trainers_client_gets_the_conservative_score_and_says_which_it_used(stub):
    from services.trainer.reward_client import RewardClient

    rpc, port = stub
    client = RewardClient(f"127.0.0.1:{port}", batch_size=2, empty_response_score=-7.0)
    try:
        prompts, responses = [p for p, _ in PAIRS] + ["q"], [r for _, r in PAIRS] + [""]
        scored = client.score_ensemble(prompts, responses)
        assert client(prompts, responses) == scored.scores
    finally:
        client.close()
    assert client.score_used == "conservative: mean - 0.5 * std of 3 heads"
    assert (scored.scores[-1], scored.means[-1], scored.stds[-1]) == (-7.0, -7.0, 0.0)
    for score, mean, std in zip(scored.scores[:-1], scored.means[:-1], scored.stds[:-1]):
        assert std > 0 and score == pytest.approx(mean - K * std, abs=1e-5)
