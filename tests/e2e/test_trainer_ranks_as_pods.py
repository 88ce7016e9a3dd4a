"""The trainer as the production PyTorchJob runs it: one `python -m services.trainer`
process per rank and no torchrun (the training operator sets RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; the ranks meet at --dist-master-addr instead of
MASTER_ADDR). When a rank is killed, rank 0 stops by itself, so that its restart
policy starts it, and a new group, afresh: nothing else would restart it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_cli.stack import health_status
from shared.kafka.broker import free_port
from shared.models.store import ModelStore
from tests.helpers import wait_until

ROOT = Path(__file__).parents[2]


def start_rank(rank: int, args: list[str], master_port: int, log_path: Path) -> subprocess.Popen:
    environment = dict(
        os.environ,
        RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="no-such-host.invalid",  # as the operator's master Service before rank 0 is ready
        MASTER_PORT=str(master_port),
    )
    with open(log_path, "wb") as log:
        command = [sys.executable, "-m", "services.trainer", *args]
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=environment)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow  # two ranks importing torch and transformers
def test_rank_zero_stops_by_itself_when_a_worker_pod_dies(broker, tiny_lm_dir, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", lambda out: shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True))
    port, master_port = free_port(), free_port()
    args = [
        "--port", str(port), "--metrics-port", "-1", "--kafka", broker.bootstrap, "--model-store", str(store.root),
        "--state-dir", str(tmp_path / "state"), "--torch-threads", "1", "--round-check-s", "0.5",
        "--log-format", "text", "--grace-period-s", "1", "--dist-master-addr", "127.0.0.1",
    ]  # fmt: skip
    master_log, worker_log = tmp_path / "master.log", tmp_path / "worker.log"
    master = start_rank(0, args, master_port, master_log)
    worker = start_rank(1, args, master_port, worker_log)
    try:
        wait_until(
            lambda: master.poll() is not None or health_status(f"127.0.0.1:{port}") == "SERVING",
            timeout_s=180,
            interval_s=0.5,
            message="rank 0 serving",
        )
        assert master.poll() is None, master_log.read_text()[-3000:]
        wait_until(lambda: "data-parallel worker ready" in worker_log.read_text(), timeout_s=60, message="rank 1")
        worker.kill()  # the worker pod is OOM-killed or its node is lost
        worker.wait()
        wait_until(lambda: master.poll() is not None, timeout_s=120, interval_s=0.5, message="rank 0 to stop")
    finally:
        stop(worker)
        stop(master)
    log = master_log.read_text()
    assert "the process group is broken" in log and "service stopped" in log, log[-3000:]
    assert master.returncode == 0, log[-3000:]  # a graceful stop; restartPolicy Always starts it again
