"""kill -9 the trainer in the middle of PPO; the restart resumes from its
checkpoint and committed offsets, and the ledger holds every accepted
feedback exactly once.

The trainer runs as a real process (python -m services.trainer) against the
test broker, a tmp model store with a tiny policy, and a small RewardService
served here over real gRPC (its score prefers three-word answers).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from demo.world import format_prompt
from shared.grpc.server import GrpcServer, ServiceBinding
from shared.kafka import events
from shared.kafka.producer import create_producer, produce_event
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import events_pb2, reward_pb2, reward_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from shared.service_config import ServiceConfig
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = ["How do I boil an egg?", "What is the capital of France?", "How do I water a plant?"]

# Real trainer processes, killed and restarted: tens of seconds.
pytestmark = pytest.mark.slow


class ThreeWordReward(reward_pb2_grpc.RewardServiceServicer):
    def ScoreBatch(self, request, context):
        scores = [-abs(len(item.response.split()) - 3) / 3.0 for item in request.items]
        return reward_pb2.ScoreBatchResponse(scores=scores, model_version="v1")


@pytest.fixture()
def reward_addr():
    server = GrpcServer(
        ServiceConfig(port=0, metrics_port=-1, host="127.0.0.1", grace_period_s=0),
        "fake-reward",
        [
            ServiceBinding(
                reward_pb2_grpc.add_RewardServiceServicer_to_server,
                ThreeWordReward(),
                reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name,
            )
        ],
    )
    port = server.start()
    server.set_serving(True)
    yield f"127.0.0.1:{port}"
    server.stop(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TrainerProcess:
    def __init__(self, args: list[str], log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.trainer", *args], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT
        )

    def kill(self, sig=signal.SIGKILL, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout_s)
        self.log.close()
        return code

    def alive(self) -> bool:
        return self.proc.poll() is None


def status(stub):
    try:
        return stub.GetStatus(trainer_pb2.GetStatusRequest(), timeout=2)
    except grpc.RpcError:
        return None


def checkpointed_steps(state_dir: Path) -> int:
    """step_count of the last complete checkpoint; a kill between atomic_dir's two
    renames leaves it under .policy-checkpoint.old-<pid>, which the trainer recovers."""
    for path in [state_dir / "policy-checkpoint", *state_dir.glob(".policy-checkpoint.old-*")]:
        if (path / "trainer_state.json").is_file():
            return json.loads((path / "trainer_state.json").read_text())["step_count"]
    raise AssertionError(f"no complete PPO checkpoint under {state_dir}")


def ledger_rows(path: Path) -> list[str]:
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT feedback_id FROM feedback")]
    finally:
        db.close()


def test_kill_minus_nine_mid_ppo_resumes_and_keeps_feedback_exactly_once(
    broker, tiny_lm_dir, tmp_path, unique_name, reward_addr
):
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", lambda out: [shutil.copy2(p, out / p.name) for p in tiny_lm_dir.iterdir()])
    state_dir, port = tmp_path / "state", free_port()
    args = [
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--metrics-port",
        "-1",
        "--kafka",
        broker.bootstrap,
        "--model-store",
        str(store.root),
        "--state-dir",
        str(state_dir),
        "--consumer-group",
        unique_name,
        "--reward-addr",
        reward_addr,
        "--policy-min-prompts",
        "2",
        "--policy-min-new-feedback",
        "1",
        # A round far longer than the test: the kill always lands mid-round.
        "--policy-steps-per-round",
        "100000",
        "--ppo-batch-size",
        "2",
        "--ppo-mini-batch-size",
        "2",
        "--ppo-max-new-tokens",
        "6",
        "--round-check-s",
        "0.5",
        "--torch-threads",
        "1",
        "--feedback-hold-s",
        "600",
        "--log-format",
        "text",
        "--grace-period-s",
        "1",
    ]
    producer = create_producer(broker.bootstrap)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    log_path = tmp_path / "trainer.log"
    sent: set[str] = set()
    trainer: TrainerProcess | None = None

    def produce_feedback(ids: list[str]) -> None:
        for i, fid in enumerate(ids):
            gid = f"{unique_name}-g{i % len(QUESTIONS)}"
            event = events_pb2.FeedbackEvent(
                feedback_id=fid, generation_id=gid, user_id=f"user-{fid}", rating=events_pb2.Rating(score=0.5)
            )
            produce_event(producer, events.FEEDBACK_TOPIC, gid, event)
            sent.add(fid)
        producer.flush(10)

    try:
        for i, question in enumerate(QUESTIONS):
            gid = f"{unique_name}-g{i}"
            produce_event(
                producer,
                events.GENERATIONS_TOPIC,
                gid,
                events_pb2.GenerationEvent(
                    event_id=events.new_id(),
                    generation_id=gid,
                    prompt=format_prompt(question),
                    response="Boil it.",
                    model_version="v1",
                    created_at=events.now_timestamp(),
                ),
            )
        first = [f"{unique_name}-f{i}" for i in range(8)]
        produce_feedback(first + first[:3])  # three duplicates by feedback_id

        trainer = TrainerProcess(args, log_path)
        checkpoint_state = state_dir / "policy-checkpoint" / "trainer_state.json"
        wait_until(
            lambda: checkpoint_state.exists() or not trainer.alive(),
            timeout_s=90,
            interval_s=0.1,
            message="first PPO checkpoint",
        )
        assert trainer.alive(), log_path.read_text()[-3000:]
        mid = status(stub)
        assert mid is not None and mid.state == trainer_pb2.TRAINER_STATE_TRAINING_POLICY
        assert trainer.kill() == -signal.SIGKILL
        steps_at_kill = checkpointed_steps(state_dir)
        assert steps_at_kill >= 1

        second = [f"{unique_name}-f{i}" for i in range(8, 12)]
        produce_feedback(second + first[3:5])  # new ids, plus ids the first run already had

        trainer = TrainerProcess(args, log_path)
        wait_until(
            lambda: set(ledger_rows(state_dir / "ledger.sqlite")) >= sent,
            timeout_s=90,
            interval_s=0.2,
            message="every feedback id in the ledger after the restart",
        )
        resumed = wait_until(
            lambda: (s := status(stub)) is not None and s.HasField("last_policy_update") and s,
            timeout_s=90,
            interval_s=0.2,
            message="a PPO step after the restart",
        )
        # A fresh trainer would report step 0; the resumed one continues the count.
        assert resumed.last_policy_update.step >= steps_at_kill
        assert "resumed PPO from checkpoint" in log_path.read_text()

        rows = [r for r in ledger_rows(state_dir / "ledger.sqlite") if r.startswith(unique_name)]
        assert len(rows) == len(set(rows)) == len(sent) == 12
        assert resumed.feedback_counts["rating"] >= 12
        assert trainer.kill(signal.SIGTERM) == 0
    finally:
        channel.close()
        producer.close()
        if trainer is not None and trainer.alive():
            trainer.proc.kill()
