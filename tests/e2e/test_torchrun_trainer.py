"""The README's distributed launch: `torchrun --nproc-per-node 2 -m services.trainer`
starts rank 0 as the trainer service (gRPC, Kafka, ledger) and rank 1 as a worker
in the same gloo process group; SIGTERM stops both cleanly."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from rlhf_cli.stack import health_status
from shared.kafka.broker import free_port
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import trainer_pb2, trainer_pb2_grpc
from tests.helpers import wait_until


@pytest.mark.slow  # torchrun and two ranks importing torch and transformers
def test_torchrun_starts_the_trainer_on_rank_zero_and_a_worker(broker, tiny_lm_dir, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", lambda out: shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True))
    port = free_port()
    torchrun = Path(sys.executable).with_name("torchrun")
    log_path = tmp_path / "torchrun.log"
    command = [
        str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "services.trainer",
        "--port", str(port), "--metrics-port", "-1", "--kafka", broker.bootstrap, "--model-store", str(store.root),
        "--state-dir", str(tmp_path / "state"), "--torch-threads", "1", "--round-check-s", "0.5",
        "--log-format", "text", "--grace-period-s", "1",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    try:
        wait_until(
            lambda: proc.poll() is not None or health_status(f"127.0.0.1:{port}") == "SERVING",
            timeout_s=180,
            interval_s=0.5,
            message="rank 0 serving",
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = trainer_pb2_grpc.TrainerServiceStub(channel).GetStatus(trainer_pb2.GetStatusRequest(), timeout=10)
        assert status.policy_version == "v1"
        wait_until(lambda: "data-parallel worker ready" in log_path.read_text(), timeout_s=60, message="rank 1 ready")
    finally:
        proc.send_signal(signal.SIGTERM)  # torchrun passes it to both ranks
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "service stopped" in log, log[-3000:]
    assert "waiting for rank 0's stop" in log and "worker failed" not in log, log[-3000:]
    assert "Connection closed by peer" not in log, "rank 0 told rank 1 to stop before either left"
