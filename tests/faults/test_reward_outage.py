"""The reward service dies in the middle of a PPO round: the trainer waits
and retries (services/trainer/reward_client.py), does not crash, writes no
policy version while it has no scores, and carries on from its last step once
the reward service is back, through the gate to a promotion.

Real processes on the test broker: the reward service (MiniLM head, ONNX)
and the trainer, with a gate that promotes any candidate it could score.
"""

from __future__ import annotations

import signal

import grpc
import pytest

from shared.kafka import events
from shared.kafka.producer import create_producer, produce_event
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import events_pb2, trainer_pb2, trainer_pb2_grpc
from tests.faults.harness import channel, kill, log_tails, restart, start_stack, write_report
from tests.helpers import start_group_at_end, wait_until

pytestmark = pytest.mark.slow  # PPO steps, an outage of the reward service and a gate: a minute or more

STEPS_PER_ROUND = 12
TRAINER_ARGS = [
    "--policy-min-prompts", "2", "--policy-min-new-feedback", "1", "--policy-steps-per-round", str(STEPS_PER_ROUND),
    "--ppo-batch-size", "2", "--ppo-mini-batch-size", "2", "--ppo-max-new-tokens", "6",
    "--round-check-s", "0.5", "--feedback-hold-s", "600", "--reward-timeout-s", "2",
    # A gate that promotes whatever it can score: a promotion needs scores, nothing else.
    "--gate-min-prompts", "2", "--gate-prompts", "4", "--gate-heldout-one-in", "2", "--gate-samples-per-prompt", "2",
    "--gate-min-reward-gain", "-1000", "--gate-confidence-z", "0", "--gate-kl-budget", "1000",
]  # fmt: skip
QUESTIONS = [f"User: question number {i} about plants?\nAssistant:" for i in range(16)]


def _feed(bootstrap: str, prefix: str) -> None:
    producer = create_producer(bootstrap)
    for i, prompt in enumerate(QUESTIONS):
        gid = f"{prefix}-g{i}"
        generation = events_pb2.GenerationEvent(
            event_id=events.new_id(),
            generation_id=gid,
            prompt=prompt,
            response="Water it.",
            model_version="v1",
            created_at=events.now_timestamp(),
        )
        produce_event(producer, events.GENERATIONS_TOPIC, gid, generation)
        feedback = events_pb2.FeedbackEvent(
            feedback_id=f"{prefix}-f{i}", generation_id=gid, user_id=f"{prefix}-u{i}", rating=events_pb2.Rating(score=1)
        )
        produce_event(producer, events.FEEDBACK_TOPIC, gid, feedback)
    producer.flush(10)
    producer.close()


def _status(stub) -> trainer_pb2.TrainerStatus | None:
    try:
        return stub.GetStatus(trainer_pb2.GetStatusRequest(), timeout=5)
    except grpc.RpcError:
        return None


def _ppo_step(stub) -> int:
    status = _status(stub)
    return status.last_policy_update.step if status is not None and status.HasField("last_policy_update") else 0


def test_reward_down_mid_round_trainer_retries_and_promotes_nothing_unscored(
    fault_store, broker, tmp_path, unique_name
):
    # The group starts where the session's topics end: what earlier tests left there is no part of this test.
    start_group_at_end(broker.bootstrap, unique_name, [events.GENERATIONS_TOPIC, events.FEEDBACK_TOPIC])
    stack = start_stack(
        tmp_path, broker.bootstrap, fault_store, ["reward", "trainer"], group=unique_name, trainer_args=TRAINER_ARGS
    )
    store = ModelStore(fault_store)
    trainer_log = stack.processes["trainer"].log_path
    ch = channel(stack.address("trainer"))
    stub = trainer_pb2_grpc.TrainerServiceStub(ch)
    try:
        _feed(broker.bootstrap, unique_name)
        wait_until(lambda: _ppo_step(stub) >= 1, 240, 0.05, f"a first PPO step, scored\n{log_tails(stack)}")
        stack.processes["reward"].proc.send_signal(signal.SIGSTOP)  # no step scores from here on
        steps_at_outage = _ppo_step(stub)
        assert steps_at_outage < STEPS_PER_ROUND, "the round must still be running when the reward service dies"
        assert kill(stack, "reward") == -signal.SIGKILL

        failures_before = trainer_log.read_text().count("training round failed; will retry")
        wait_until(
            lambda: trainer_log.read_text().count("training round failed; will retry") > failures_before,
            180,
            0.5,
            f"the trainer to give up one attempt and retry\n{log_tails(stack)}",
        )
        text = trainer_log.read_text()
        assert "reward scoring failed; retrying" in text and "RewardScoringError" in text
        assert stack.processes["trainer"].running(), "the trainer survives the outage"
        during = _status(stub)
        assert during is not None and during.policy_version == "v1"
        assert _ppo_step(stub) <= steps_at_outage + 1, "no PPO step completes without scores"
        assert store.versions("policy") == ["v1"], "nothing promoted without scores"

        restart(stack.processes["reward"])
        wait_until(lambda: _ppo_step(stub) > steps_at_outage + 1, 240, 0.5, "PPO steps again once scores come back")
        wait_until(
            lambda: store.versions("policy") == ["v1", "v2"], 300, 0.5, f"the gate to promote\n{log_tails(stack)}"
        )
        promoted = store.manifest("policy", "v2")
        assert promoted.eval_metrics["ppo_step"] >= STEPS_PER_ROUND
        assert promoted.eval_metrics["current_mean_reward"] == promoted.eval_metrics["current_mean_reward"]  # not NaN
        write_report(
            "reward_outage",
            {
                "ppo_step_at_outage": steps_at_outage,
                "rounds_failed_and_retried": trainer_log.read_text().count("training round failed; will retry"),
                "scoring_retries_logged": trainer_log.read_text().count("reward scoring failed; retrying"),
                "promoted_during_outage": 0,
                "promoted_after": "v2",
            },
        )
    finally:
        ch.close()
        stack.stop()
