"""Imported reward models served and trained by the real platform parts: the reward
gRPC service (ONNX Runtime, and torch for comparison) and the trainer's reward update."""

from __future__ import annotations

import grpc
import pytest

from services.reward.config import RewardConfig
from services.reward.scorer import load_reward_version
from services.reward.server import RewardServer
from shared.kafka.producer import create_producer
from shared.models.importer import import_reward
from shared.models.reward.format import load_reward_model
from shared.models.reward.onnx_export import ONNX_FILE
from shared.models.reward.scoring import score_texts
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from tests.foreign_models import build_tiny_seq_cls_reward

PAIRS = [
    ("How do I boil an egg?", "Boil it for nine minutes."),
    ("Capital of France?", "Paris."),
    ("<|user|>\nWater a fern?\n<|assistant|>\n", "Keep the soil damp."),
    ("Pick a lock?", "Sorry, I can't."),
]
ARCHITECTURES = {"llama": "LlamaForSequenceClassification", "bert": "BertForSequenceClassification"}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def imported(request, tmp_path_factory):
    """(arch, store) with the tiny reward model of ``arch`` imported as the current reward version."""
    root = tmp_path_factory.mktemp(f"import-{request.param}")
    src = build_tiny_seq_cls_reward(root / "src", arch=request.param, with_pad_token=request.param == "bert")
    store = ModelStore(root / "store")
    result = import_reward(store, src, set_current=True)
    assert result.version == "v1" and result.notes["scoring_backend"] == "onnx", result.notes
    return request.param, store


def batch_request(pairs):
    return reward_pb2.ScoreBatchRequest(items=[reward_pb2.ScoreRequest(prompt=p, response=r) for p, r in pairs])


def test_the_reward_service_serves_an_imported_model_with_onnx(imported):
    arch, store = imported
    assert (store.open_version("reward", "v1") / ONNX_FILE).is_file()
    config = RewardConfig(port=0, metrics_port=-1, model_store=str(store.root), watch_updates=False, grace_period_s=1)
    server = RewardServer(config)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        served = stub.ScoreBatch(batch_request(PAIRS))
        single = stub.Score(reward_pb2.ScoreRequest(prompt=PAIRS[2][0], response=PAIRS[2][1]))
        info = stub.GetModelInfo(common_pb2.GetModelInfoRequest())
    finally:
        channel.close()
        server.stop(1)
    assert served.model_version == "v1" and single.score == pytest.approx(served.scores[2], abs=1e-4)
    assert info.backend == "onnxruntime" and info.architecture == ARCHITECTURES[arch]
    prompts, responses = zip(*PAIRS)
    eager = load_reward_version(store, "v1", "torch", threads=1)
    assert eager.backend.name == "torch"
    assert list(served.scores) == pytest.approx(eager.score(prompts, responses), abs=1e-4)
    assert max(served.scores) - min(served.scores) > 1e-3  # distinct scores: the comparison means something


def test_the_trainer_fine_tunes_an_imported_model_and_promotes_it(broker, imported):
    from services.trainer.data.training_sets import Comparison
    from services.trainer.loop.heldout import HeldoutSplit
    from services.trainer.loop.promotion import Promoter
    from services.trainer.loop.reward_update import RewardUpdateSettings, update_reward_model

    arch, store = imported
    split = HeldoutSplit(2)
    comparisons = [
        Comparison(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", "No.")
        for a in range(1, 5)
        for b in range(1, 5)
    ]
    settings = RewardUpdateSettings(
        min_new_comparisons=1,
        steps=4,
        tolerance=1.0,
        batch_size=4,
        lr=1e-3,
        head_lr=1e-3,
        trainable_layers=1,
        min_heldout_pairs=2,
    )
    producer = create_producer(broker.bootstrap)
    try:
        outcome = update_reward_model(
            store, Promoter(store, lambda: producer), settings, comparisons, comparisons, split, threads=1
        )
    finally:
        producer.close()
    assert outcome.promoted and outcome.version == "v2" and store.current("reward") == "v2", outcome
    manifest = store.manifest("reward", "v2")
    assert manifest.parent_version == "v1" and manifest.notes["scoring_backend"] == "onnx"
    assert (store.open_version("reward", "v2") / ONNX_FILE).is_file()
    before, _ = load_reward_model(store.open_version("reward", "v1"))
    after, tokenizer = load_reward_model(store.open_version("reward", "v2"))
    assert type(after) is type(before) and after.architecture == ARCHITECTURES[arch]
    prompts, responses = zip(*PAIRS)
    assert score_texts(after, tokenizer, prompts, responses) != pytest.approx(
        score_texts(before, tokenizer, prompts, responses), abs=1e-6
    )
    served = load_reward_version(store, "v2", "onnx", threads=1)
    assert served.backend.name == "onnxruntime"
    assert served.score(prompts, responses) == pytest.approx(
        score_texts(after, tokenizer, prompts, responses), abs=1e-4
    )


def test_a_minilm_format_dir_imports_as_itself(tmp_path):
    from shared.models.reward.format import save_reward_model
    from shared.models.reward.minilm import new_reward_model

    model, tokenizer = new_reward_model(max_length=32, seed=4)
    src = save_reward_model(model, tokenizer, tmp_path / "minilm")
    store = ModelStore(tmp_path / "store")
    result = import_reward(store, src)
    assert result.notes["format"] == "minilm-scalar-head" and result.notes["scoring_backend"] == "onnx"
    assert result.notes["architecture"] == "RewardModel(BertModel+mean-pool+linear)"
    loaded = load_reward_version(store, result.version, "onnx", threads=1)
    prompts, responses = zip(*PAIRS)
    assert loaded.score(prompts, responses) == pytest.approx(
        score_texts(model, tokenizer, prompts, responses), abs=1e-4
    )
