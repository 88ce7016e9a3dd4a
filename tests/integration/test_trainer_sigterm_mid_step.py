"""SIGTERM in the middle of a policy step that could never finish on its own: the trainer
process abandons the step and exits 0 by itself, well inside the 30 s `rlhf up` gives a
service (rlhf_cli/stack.py) before it kills it, leaving the store and the checkpoint as
they were and saying in its log what it abandoned.

The trainer runs as a real process (python -m services.trainer, as `rlhf up` starts it)
against the test broker, a tmp model store with the tiny GPT-2, and a reward service
served here over real gRPC that counts its calls: a call means a rollout was scored, so
the step's update is underway. The method is RLOO training a LoRA adapter (the
configuration of issue #19). The round it resumes was begun here, through the loop's own
PolicyRounds, with one finished step checkpointed; the process's next step is ten
million epochs over its rollout.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from services.trainer.loop.policy_round import PolicyRounds
from services.trainer.loop.trainer_progress import load_progress
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
from shared.grpc.server import GrpcServer, ServiceBinding
from shared.kafka import events
from shared.kafka.producer import create_producer, produce_event
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import events_pb2, reward_pb2, reward_pb2_grpc
from shared.service_config import ServiceConfig
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = ["How do I boil an egg?", "What is the capital of France?", "How do I water a plant?", "Why is it dark?"]
# What `rlhf up` waits after SIGTERM before it kills a service (rlhf_cli/stack.py, Stack.stop).
SUPERVISOR_GRACE_S = 30
ENDLESS_EPOCHS = "10000000"


class CountingReward(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self):
        self.called = threading.Event()

    def ScoreBatch(self, request, context):
        self.called.set()
        scores = short_answer_reward([], [item.response for item in request.items])
        return reward_pb2.ScoreBatchResponse(scores=scores, model_version="v1")


@pytest.fixture()
def reward_service():
    servicer = CountingReward()
    server = GrpcServer(
        ServiceConfig(port=0, metrics_port=-1, host="127.0.0.1", grace_period_s=0),
        "counting-reward",
        [
            ServiceBinding(
                reward_pb2_grpc.add_RewardServiceServicer_to_server,
                servicer,
                reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name,
            )
        ],
    )
    port = server.start()
    server.set_serving(True)
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def short_answer_reward(prompts, responses):
    return [-abs(len(r.split()) - 3) / 3.0 for r in responses]


def begin_round_with_one_step(store: ModelStore, checkpoint: Path, config: RLOOConfig) -> None:
    """What a trainer leaves after a round's first step: the round begun and its step checkpointed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rounds = PolicyRounds(store, checkpoint, short_answer_reward, lambda *_: config, method="rloo")
        rounds.begin_round()
        rounds.run_step([f"User: {q}\nAssistant:" for q in QUESTIONS], [])
    finally:
        torch.set_num_threads(threads)


def send_traffic(bootstrap: str, prefix: str) -> None:
    """A served answer to each question and a rating of each: a policy round is due."""
    producer = create_producer(bootstrap)
    try:
        for i, question in enumerate(QUESTIONS):
            gid = f"{prefix}-g{i}"
            generation = events_pb2.GenerationEvent(
                event_id=events.new_id(),
                generation_id=gid,
                prompt=f"User: {question}\nAssistant:",
                response="Boil it.",
                model_version="v1",
                created_at=events.now_timestamp(),
            )
            produce_event(producer, events.GENERATIONS_TOPIC, gid, generation)
            feedback = events_pb2.FeedbackEvent(
                feedback_id=f"{prefix}-f{i}",
                generation_id=gid,
                user_id=f"user-{i}",
                rating=events_pb2.Rating(score=0.5),
            )
            produce_event(producer, events.FEEDBACK_TOPIC, gid, feedback)
        producer.flush(10)
    finally:
        producer.close()


def test_sigterm_mid_step_abandons_it_and_exits_0_with_the_checkpoint_intact(
    broker, tiny_lm_dir, tmp_path, unique_name, reward_service
):
    reward_addr, reward = reward_service
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", lambda out: shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True))
    state_dir = tmp_path / "state"
    checkpoint = state_dir / "policy-checkpoint"
    log_path = tmp_path / "trainer.log"
    args = [
        *("--port", str(free_port()), "--host", "127.0.0.1", "--metrics-port", "-1"),
        *("--kafka", broker.bootstrap, "--consumer-group", unique_name),
        *("--model-store", str(store.root), "--state-dir", str(state_dir), "--reward-addr", reward_addr),
        *("--policy-method", "rloo", "--policy-min-prompts", "2", "--policy-min-new-feedback", "1"),
        *("--policy-steps-per-round", "1000", "--round-check-s", "0.5", "--torch-threads", "1"),
        *("--rloo-lora-rank", "4", "--rloo-batch-size", "2", "--rloo-samples-per-prompt", "2"),
        *("--rloo-mini-batch-size", "2", "--rloo-max-new-tokens", "6", "--rloo-epochs", ENDLESS_EPOCHS),
        *("--feedback-hold-s", "600", "--log-format", "text"),
    ]
    quick = RLOOConfig(lora_rank=4, batch_size=2, samples_per_prompt=2, mini_batch_size=2, max_new_tokens=6)
    begin_round_with_one_step(store, checkpoint, quick)
    finished = tree_digest(checkpoint)
    send_traffic(broker.bootstrap, unique_name)

    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.trainer", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: reward.called.is_set() or proc.poll() is not None,
            timeout_s=120,
            interval_s=0.05,
            message="the endless step's rollout scored (its update is underway)",
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=SUPERVISOR_GRACE_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {SUPERVISOR_GRACE_S} s after SIGTERM: `rlhf up` would kill -9 it\n"
                + log_path.read_text()[-3000:]
            ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    log_text = log_path.read_text()
    assert code == 0, log_text[-3000:]
    assert "resumed RLOO from checkpoint" in log_text, log_text[-3000:]
    assert "stop requested: abandoned unfinished work" in log_text, log_text[-3000:]
    assert "RLOO step 2 of round 1" in log_text, "the log names the step it abandoned"
    assert tree_digest(checkpoint) == finished, "the checkpoint is the last finished step's, byte for byte"
    assert not list(state_dir.glob(".policy-checkpoint.*")), "nothing half-written beside it"
    assert store.versions("policy") == ["v1"] and store.current("policy") == "v1", "nothing stored or promoted"
    progress = load_progress(state_dir / "trainer_state.json")  # what the loop counts as trained on
    assert progress.candidate == {} and progress.last_round_seq == 0, "the abandoned step's data counted nowhere"
