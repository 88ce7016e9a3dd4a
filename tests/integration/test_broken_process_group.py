"""A rank that dies breaks the data-parallel group for good: rank 0 must notice at its
next order and stop (so torchrun or the PyTorchJob's restart policy starts every rank
afresh) instead of serving on with a training thread that can never train again."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from services.trainer.parallel.coordinator import Coordinator
from services.trainer.parallel.group import DataParallel, exit_rank
from shared.kafka.broker import free_port
from tests.helpers import wait_until

LOST_RANK_EXIT_CODE = 3


def heartbeat_fails(coordinator: Coordinator) -> bool:
    try:
        coordinator.heartbeat()
    except Exception:  # noqa: BLE001 - whatever gloo raises for a lost peer
        return True
    return False


def rank_main(rank: int, port: int, work_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    group = DataParallel.from_env("gloo", timeout_s=60)
    if rank == 1:
        assert group.broadcast_json() == {"op": "heartbeat"}
        os._exit(LOST_RANK_EXIT_CODE)  # killed (OOM, node lost): no goodbye to rank 0
    calls: list[str] = []
    coordinator = Coordinator(group, on_broken=lambda: calls.append("broken"))
    coordinator.heartbeat()  # the group works
    wait_until(lambda: heartbeat_fails(coordinator), timeout_s=120, interval_s=0.2, message="an order to fail")
    heartbeat_fails(coordinator)  # a second failure: on_broken was already called
    (Path(work_dir) / "rank0.json").write_text(json.dumps({"calls": calls, "broken": coordinator.broken}))
    exit_rank(0)  # as the launcher does, without destroying the group: its peer is gone


def test_rank_zero_stops_when_another_rank_is_gone(tmp_path):
    port = free_port()
    spawn = multiprocessing.get_context("spawn")
    ranks = [spawn.Process(target=rank_main, args=(rank, port, str(tmp_path))) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=300)
    assert [p.exitcode for p in ranks] == [0, LOST_RANK_EXIT_CODE]
    assert json.loads((tmp_path / "rank0.json").read_text()) == {"calls": ["broken"], "broken": True}
