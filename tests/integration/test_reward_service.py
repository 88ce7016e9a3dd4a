"""The reward service end to end: a reward version in a real model store,
ONNX Runtime scoring over gRPC, and a hot swap under load via a real broker."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.reward.config import RewardConfig
from services.reward.scorer import RewardLimits, RewardScorer, load_reward_version
from services.reward.server import RewardServer
from shared.kafka import events
from shared.kafka.producer import create_producer, produce_event
from shared.models.reward.format import load_reward_model, save_reward_model
from shared.models.reward.minilm import new_reward_model
from shared.models.reward.onnx_export import export_onnx
from shared.models.reward.scoring import score_texts
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, events_pb2, reward_pb2, reward_pb2_grpc
from tests.helpers import wait_until

PAIRS = [
    ("How do I boil an egg?", "Boil it for nine minutes."),
    ("Capital of France?", "Paris."),
    ("Water a fern?", "Keep the soil damp."),
    ("Pick a lock?", "Sorry, I can't help."),
]


def write_reward_version(store: ModelStore, seed: int, *, with_onnx: bool, parent: str = "") -> str:
    model, tokenizer = new_reward_model(seed=seed, max_length=48)

    def fill(path):
        save_reward_model(model, tokenizer, path)
        if with_onnx:
            export_onnx(model, tokenizer, path)

    return store.write_version("reward", fill, parent_version=parent, eval_metrics={"accuracy": 0.5}).version


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = ModelStore(tmp_path_factory.mktemp("store"))
    write_reward_version(store, seed=1, with_onnx=True)
    return store


@pytest.fixture(scope="module")
def reward(broker, store):
    config = RewardConfig(
        port=0,
        metrics_port=-1,
        kafka=broker.bootstrap,
        model_store=str(store.root),
        max_batch_size=8,
        max_prompt_chars=200,
        max_response_chars=200,
        grace_period_s=2,
    )
    server = RewardServer(config)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, reward_pb2_grpc.RewardServiceStub(channel), channel
    channel.close()
    server.stop(2)


def batch_request(pairs):
    return reward_pb2.ScoreBatchRequest(items=[reward_pb2.ScoreRequest(prompt=p, response=r) for p, r in pairs])


def test_score_and_score_batch_agree_and_name_the_version(reward):
    _, stub, channel = reward
    batch = stub.ScoreBatch(batch_request(PAIRS))
    assert batch.model_version == "v1" and len(batch.scores) == len(PAIRS)
    single = stub.Score(reward_pb2.ScoreRequest(prompt=PAIRS[1][0], response=PAIRS[1][1]))
    assert single.model_version == "v1"
    assert single.score == pytest.approx(batch.scores[1], abs=1e-4)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_model_info_describes_the_serving_version(reward):
    _, stub, _ = reward
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest())
    assert info.kind == common_pb2.MODEL_KIND_REWARD and info.version == "v1"
    assert info.backend == "onnxruntime" and info.device == "cpu" and info.num_parameters > 20_000_000
    assert info.context_window == 48 and info.eval_metrics["accuracy"] == 0.5
    assert dict(info.limits) == {"max_batch_size": 8, "max_prompt_chars": 200, "max_response_chars": 200}


@pytest.mark.parametrize(
    "request_,field",
    [
        (reward_pb2.ScoreBatchRequest(), "items"),
        (batch_request(PAIRS * 3), "items"),
        (batch_request([("q", "fine"), ("q", "  ")]), "items[1].response"),
        (batch_request([("q" * 201, "fine")]), "items[0].prompt"),
        (batch_request([("q", "r" * 201)]), "items[0].response"),
    ],
    ids=["empty", "too-many", "empty-response", "long-prompt", "long-response"],
)
def test_bad_batches_name_the_field(reward, request_, field):
    _, stub, _ = reward
    with pytest.raises(grpc.RpcError) as info:
        stub.ScoreBatch(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field + ":"), info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(reward_pb2.ScoreRequest(prompt="q", response=""))
    assert info.value.details().startswith("response:")


def test_onnx_and_torch_backends_score_alike(store):
    # 40 pairs of varied lengths: ONNX Runtime scores them in length buckets (scorer.BUCKET_PAIRS).
    prompts = [PAIRS[i % 4][0] for i in range(40)]
    responses = [PAIRS[i % 4][1] * (i % 5 + 1) for i in range(40)]
    onnx = load_reward_version(store, "v1", "onnx", threads=2).score(prompts, responses)
    eager = load_reward_version(store, "v1", "torch", threads=2)
    assert onnx == pytest.approx(eager.score(prompts, responses), abs=1e-4)
    # ... and as one batch padded to its longest pair, in the input order.
    model, tokenizer = load_reward_model(store.open_version("reward", "v1"))
    assert onnx == pytest.approx(score_texts(model, tokenizer, prompts, responses), abs=1e-4)


def test_an_update_whose_manifest_does_not_match_is_refused(store):
    scorer = RewardScorer(store, RewardLimits())
    with pytest.raises(ValueError, match="manifest sha256"):
        scorer.load("v1", expected_manifest_sha256="0" * 64)
    assert scorer.current is None


def test_not_serving_until_a_version_is_loaded(broker, tmp_path):
    config = RewardConfig(
        port=0, metrics_port=-1, kafka=broker.bootstrap, model_store=str(tmp_path), watch_updates=False
    )
    server = RewardServer(config)
    port = server.grpc.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            reward_pb2_grpc.RewardServiceStub(channel).Score(reward_pb2.ScoreRequest(prompt="q", response="r"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
        server.stop(0)


def test_hot_swap_under_load_drops_nothing(broker, store, reward):
    """Must run last in this module: it moves the service to v2."""
    server, stub, _ = reward
    assert server.follower.ready.wait(30)
    before = stub.ScoreBatch(batch_request(PAIRS)).scores
    answers: list[tuple[str, list[float]]] = []
    per_client: list[list[str]] = [[] for _ in range(3)]
    failures: list[BaseException] = []
    stop = threading.Event()

    def client(seen: list[str]):
        while not stop.is_set():
            try:
                reply = stub.ScoreBatch(batch_request(PAIRS), timeout=60)
                answers.append((reply.model_version, list(reply.scores)))
                seen.append(reply.model_version)
            except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                failures.append(exc)

    clients = [threading.Thread(target=client, args=(seen,)) for seen in per_client]
    for t in clients:
        t.start()
    try:
        # v2 has no model.onnx: the service exports it on load.
        v2 = write_reward_version(store, seed=2, with_onnx=False, parent="v1")
        store.set_current("reward", v2)
        update = events_pb2.ModelUpdateEvent(
            event_id=events.new_id(),
            kind=common_pb2.MODEL_KIND_REWARD,
            version=v2,
            previous_version="v1",
            action=events_pb2.MODEL_UPDATE_ACTION_PROMOTE,
            manifest_sha256=store.manifest_sha256("reward", v2),
        )
        producer = create_producer(broker.bootstrap)
        produce_event(producer, events.MODEL_UPDATES_TOPIC, "reward", update).get(10)
        producer.close()
        wait_until(lambda: any(v == v2 for v, _ in answers), timeout_s=90, message="answers from v2")
        wait_until(
            lambda: all("v2" in seen for seen in per_client), timeout_s=60, message="every client answered by v2"
        )
    finally:
        stop.set()
        for t in clients:
            t.join(60)
    assert failures == []
    assert {v for v, _ in answers} <= {"v1", "v2"}
    # Each client's calls are sequential: once one was answered by v2, every
    # later one is too (a call in flight at the swap may still finish on v1).
    for seen in per_client:
        first_v2 = seen.index("v2")
        assert seen[first_v2:] == ["v2"] * (len(seen) - first_v2), seen
    after = stub.ScoreBatch(batch_request(PAIRS))
    assert after.model_version == "v2" and list(after.scores) != pytest.approx(list(before), abs=1e-6)
    assert stub.GetModelInfo(common_pb2.GetModelInfoRequest()).parent_version == "v1"


def test_trainer_reward_client_scores_empty_responses_itself_and_batches_the_rest(reward):
    # A policy can sample EOS first; the service refuses empty text, so the
    # trainer's client gives such responses its fixed score and sends the rest.
    from services.trainer.reward_client import RewardClient

    server, stub, _ = reward
    client = RewardClient(f"127.0.0.1:{server.grpc.port}", batch_size=3, empty_response_score=-42.0)
    try:
        prompts = [p for p, _ in PAIRS] + ["How do I boil an egg?", "How do I boil an egg?"]
        responses = [r for _, r in PAIRS] + ["", "  "]
        order = [len(PAIRS), 0, len(PAIRS) + 1, *range(1, len(PAIRS))]  # empties among the real ones
        scores = client([prompts[i] for i in order], [responses[i] for i in order])
    finally:
        client.close()
    expected = list(stub.ScoreBatch(batch_request(PAIRS)).scores)
    by_position = dict(zip(order, scores))
    assert by_position[len(PAIRS)] == by_position[len(PAIRS) + 1] == -42.0
    assert [by_position[i] for i in range(len(PAIRS))] == pytest.approx(expected, abs=1e-4)


def test_a_single_head_reports_itself_as_a_one_member_ensemble(reward):
    _, stub, _ = reward
    reply = stub.ScoreBatch(batch_request(PAIRS))
    assert reply.ensemble_size == 1
    assert list(reply.ensemble_means) == list(reply.scores) and list(reply.ensemble_stds) == [0.0] * len(PAIRS)
