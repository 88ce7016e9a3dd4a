"""Canary rollouts judged by live feedback, end to end in one process: a real
broker, a policy replica and the trainer on real gRPC servers, a model store
with two policy versions, and simulated users who call Generate with their
user id and send thumbs for what they got."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from services.trainer.config import TrainerConfig
from services.trainer.server import TrainerServer
from shared.canary import serves_canary
from shared.errors import FailedPrecondition
from shared.kafka import events
from shared.kafka.producer import create_producer, produce_event
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2, policy_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.helpers import read_topic, start_group_at_end, wait_until

SHARE = 0.5
MIN_FEEDBACK = 8
CANDIDATE_USERS = [f"user-{i}" for i in range(200)]
CANARY_USERS = [u for u in CANDIDATE_USERS if serves_canary(u, SHARE)][:5]
STABLE_USERS = [u for u in CANDIDATE_USERS if not serves_canary(u, SHARE)][:5]


def two_versions(root, tiny_lm_dir) -> ModelStore:
    """policy v1 (the tiny LM) and v2 (a re-seeded copy of it), CURRENT = v1."""
    from transformers import AutoTokenizer

    from demo.tiny_lm import new_gpt2, save_causal_lm

    store = ModelStore(root)
    store.write_version("policy", lambda out: shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True))
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir, local_files_only=True)
    model = new_gpt2(tokenizer, n_layer=2, n_head=2, n_embd=64, n_positions=128, seed=7)
    store.write_version("policy", lambda out: save_causal_lm(model, tokenizer, out), parent_version="v1")
    store.set_current("policy", "v1")
    return store


@dataclass
class Loop:
    policy: PolicyService
    trainer: TrainerServer
    store: ModelStore
    policy_stub: policy_pb2_grpc.PolicyServiceStub
    trainer_stub: trainer_pb2_grpc.TrainerServiceStub
    producer: Any


@pytest.fixture()
def loop(broker, tiny_lm_dir, tmp_path, unique_name):
    store = two_versions(tmp_path / "store", tiny_lm_dir)
    common = dict(kafka=broker.bootstrap, model_store=str(store.root), metrics_port=-1, log_format="text")
    policy = PolicyService(PolicyConfig(host="127.0.0.1", port=0, default_max_new_tokens=4, **common))
    policy.start()
    trainer = TrainerServer(
        TrainerConfig(
            port=0,
            state_dir=str(tmp_path / "state"),
            consumer_group=unique_name,
            start_paused=True,  # no training rounds: this is about the canary alone
            round_check_s=0.2,
            canary_min_feedback=MIN_FEEDBACK,
            grace_period_s=1,
            torch_threads=1,
            **common,
        ),
        reward_fn=lambda prompts, responses: [0.0] * len(prompts),
    )
    # The group starts where the session's topics end: what earlier tests left there is no part of this test.
    start_group_at_end(broker.bootstrap, unique_name, [events.GENERATIONS_TOPIC, events.FEEDBACK_TOPIC])
    trainer.start()
    wait_until(policy.updates.ready.is_set, timeout_s=30, message="the replica follows model updates")
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in (policy.port, trainer.grpc.port)]
    producer = create_producer(broker.bootstrap)
    yield Loop(
        policy,
        trainer,
        store,
        policy_pb2_grpc.PolicyServiceStub(channels[0]),
        trainer_pb2_grpc.TrainerServiceStub(channels[1]),
        producer,
    )
    producer.close()
    for channel in channels:
        channel.close()
    trainer.stop(1)
    policy.stop(grace_s=1)


def start_canary(policy, trainer_stub) -> float:
    started = time.time()
    update = trainer_stub.Promote(
        trainer_pb2.PromoteRequest(
            kind=common_pb2.MODEL_KIND_POLICY, version="v2", reason="try v2 on half the users", canary_share=SHARE
        ),
        timeout=30,
    )
    assert (update.action, update.version, update.previous_version) == (
        events_pb2.MODEL_UPDATE_ACTION_CANARY_START,
        "v2",
        "v1",
    )
    assert update.canary_share == SHARE
    wait_until(lambda: policy.router.serving_canary() == ("v2", SHARE), timeout_s=30, message="the replica canaries")
    return started


def users_answer(policy_stub, producer, store, thumb_for) -> None:
    """Every user asks once and sends a thumb for the version that answered (thumb_for(version))."""
    for user in CANARY_USERS + STABLE_USERS:
        reply = policy_stub.Generate(
            policy_pb2.GenerateRequest(prompt="User: how do I boil an egg?\nAssistant:", user_id=user), timeout=30
        )
        expected = "v2" if user in CANARY_USERS else "v1"
        if store.canary("policy") is not None:  # still running after the reply: it was running during it
            assert reply.model_version == expected, f"{user} is sticky to {expected}"
        generation = reply.completions[0].generation_id
        feedback = events_pb2.FeedbackEvent(
            feedback_id=events.new_id(),
            generation_id=generation,
            user_id=user,
            created_at=events.now_timestamp(),
            rating=events_pb2.Rating(thumb=thumb_for(reply.model_version)),
        )
        produce_event(producer, events.FEEDBACK_TOPIC, generation, feedback).get(timeout=10)


def updates_since(broker, started: float) -> list[tuple[int, str, str]]:
    published = read_topic(broker.bootstrap, events.MODEL_UPDATES_TOPIC, events_pb2.ModelUpdateEvent)
    return [
        (m.action, m.version, m.previous_version)
        for _, m in published
        if m.created_at.ToNanoseconds() / 1e9 >= started and m.action != events_pb2.MODEL_UPDATE_ACTION_PROMOTE
    ]


def serve_until_decided(policy_stub, producer, store, thumb_for) -> None:
    def decided() -> bool:
        if store.canary("policy") is None:
            return True
        users_answer(policy_stub, producer, store, thumb_for)
        return False

    wait_until(decided, timeout_s=120, interval_s=0.5, message="the trainer decides the canary")


def test_users_unhappy_with_the_canary_roll_it_back(loop, broker):
    policy, store, policy_stub, trainer_stub, producer = (
        loop.policy,
        loop.store,
        loop.policy_stub,
        loop.trainer_stub,
        loop.producer,
    )
    started = start_canary(policy, trainer_stub)
    assert store.canary("policy").version == "v2" and store.current("policy") == "v1"

    def thumb_for(version: str) -> int:
        return events_pb2.THUMB_DOWN if version == "v2" else events_pb2.THUMB_UP

    serve_until_decided(policy_stub, producer, store, thumb_for)
    assert store.current("policy") == "v1", "the stable version stays"
    wait_until(lambda: policy.router.serving_canary() is None, timeout_s=30, message="the replica retires v2")
    for user in CANARY_USERS:
        reply = policy_stub.Generate(policy_pb2.GenerateRequest(prompt="User: hi\nAssistant:", user_id=user))
        assert reply.model_version == "v1"
    actions = updates_since(broker, started)
    assert actions == [
        (events_pb2.MODEL_UPDATE_ACTION_CANARY_START, "v2", "v1"),
        (events_pb2.MODEL_UPDATE_ACTION_CANARY_ROLLBACK, "v1", "v2"),
    ]
    status = trainer_stub.GetStatus(trainer_pb2.GetStatusRequest(), timeout=10).canary
    assert (status.version, status.decision, status.active) == ("v2", "rolled_back", False)
    assert status.canary_feedback >= MIN_FEEDBACK and status.stable_feedback >= MIN_FEEDBACK
    assert status.canary_score == -1.0 and status.stable_score == 1.0 and status.difference == -2.0


def test_users_equally_happy_complete_the_canary(loop, broker):
    policy, store, policy_stub, trainer_stub, producer = (
        loop.policy,
        loop.store,
        loop.policy_stub,
        loop.trainer_stub,
        loop.producer,
    )
    started = start_canary(policy, trainer_stub)
    serve_until_decided(policy_stub, producer, store, lambda version: events_pb2.THUMB_UP)
    assert store.current("policy") == "v2", "the canary is the stable version now"
    wait_until(lambda: policy.engine.bundle.version == "v2", timeout_s=30, message="every user on v2")
    wait_until(lambda: policy.router.serving_canary() is None, timeout_s=30, message="the canary engine retired")
    for user in STABLE_USERS:
        reply = policy_stub.Generate(policy_pb2.GenerateRequest(prompt="User: hi\nAssistant:", user_id=user))
        assert reply.model_version == "v2"
    assert updates_since(broker, started) == [
        (events_pb2.MODEL_UPDATE_ACTION_CANARY_START, "v2", "v1"),
        (events_pb2.MODEL_UPDATE_ACTION_CANARY_COMPLETE, "v2", "v1"),
    ]
    status = trainer_stub.GetStatus(trainer_pb2.GetStatusRequest(), timeout=10)
    assert (status.canary.decision, status.policy_version) == ("completed", "v2")


def test_an_operator_rollback_ends_the_canary(loop, broker):
    policy, store, trainer_stub = loop.policy, loop.store, loop.trainer_stub
    started = start_canary(policy, trainer_stub)
    update = trainer_stub.Rollback(
        trainer_pb2.RollbackRequest(kind=common_pb2.MODEL_KIND_POLICY, reason="not today"), timeout=30
    )
    assert (update.action, update.version, update.previous_version) == (
        events_pb2.MODEL_UPDATE_ACTION_CANARY_ROLLBACK,
        "v1",
        "v2",
    )
    assert store.canary("policy") is None and store.current("policy") == "v1"
    wait_until(lambda: policy.router.serving_canary() is None, timeout_s=30, message="the replica retires v2")
    assert [a for a, _, _ in updates_since(broker, started)] == [
        events_pb2.MODEL_UPDATE_ACTION_CANARY_START,
        events_pb2.MODEL_UPDATE_ACTION_CANARY_ROLLBACK,
    ]
    with pytest.raises(grpc.RpcError) as refused:
        trainer_stub.Promote(
            trainer_pb2.PromoteRequest(kind=common_pb2.MODEL_KIND_POLICY, version="v1", canary_share=0.2), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already the current policy version" in refused.value.details()


def test_a_gate_passed_candidate_starts_as_a_canary(loop, tiny_lm_dir):
    """What the trainer's gate does with --canary-share: store the candidate, canary it, one rollout at a time."""
    policy, store, promoter = loop.policy, loop.store, loop.trainer.promoter
    update = promoter.promote_new(
        "policy",
        lambda out: shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True),
        parent_version="v1",
        eval_metrics={"reward_gain": 0.1},
        reason="gate passed",
        expected_current="v1",
        canary_share=0.3,
    )
    assert (update.action, update.version, update.canary_share) == (
        events_pb2.MODEL_UPDATE_ACTION_CANARY_START,
        "v3",
        0.3,
    )
    assert store.current("policy") == "v1" and store.canary("policy").version == "v3"
    wait_until(lambda: policy.router.serving_canary() == ("v3", 0.3), timeout_s=30, message="the replica canaries v3")
    with pytest.raises(FailedPrecondition, match="one rollout at a time"):
        promoter.promote_new(
            "policy", lambda out: None, parent_version="v1", eval_metrics={}, reason="x", canary_share=0.3
        )
    assert store.versions("policy") == ["v1", "v2", "v3"], "nothing stored for the refused candidate"
