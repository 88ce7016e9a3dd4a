"""Where the ranks of a data-parallel trainer meet: MASTER_ADDR as torchrun and the
training operator set it, or --dist-master-addr instead (the production PyTorchJob's
trainer-rendezvous Service, which lists rank 0 before it is ready)."""

from __future__ import annotations

import socket

from services.trainer.config import TrainerConfig
from services.trainer.parallel.group import DataParallel
from shared import env
from shared.config import load_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dist_master_addr_replaces_master_addr(monkeypatch):
    # A MASTER_ADDR that never resolves: joining through it would fail after the timeout.
    monkeypatch.setenv("MASTER_ADDR", "no-such-host.invalid")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv(env.TRAINER_DIST_MASTER_ADDR, "127.0.0.1")
    config = load_config(TrainerConfig, [])
    assert config.dist_master_addr == "127.0.0.1"
    group = DataParallel.from_env("gloo", timeout_s=60, master_addr=config.dist_master_addr)
    try:
        assert (group.rank, group.world_size, group.is_main) == (0, 1, True)
        assert group.broadcast_json({"op": "heartbeat"}) == {"op": "heartbeat"}
    finally:
        group.close()


def test_dist_master_addr_is_off_by_default(monkeypatch):
    monkeypatch.delenv(env.TRAINER_DIST_MASTER_ADDR, raising=False)
    assert load_config(TrainerConfig, []).dist_master_addr == ""
