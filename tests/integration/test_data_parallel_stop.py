"""A stop request on rank 0 in the middle of a data-parallel PPO step: every rank leaves the
step at the same minibatch (PPOTrainer's agreed stop points), so none is left waiting in a
collective; rank 0 keeps its last finished step's checkpoint, and the worker waits for rank
0's next order (its `stop`) and exits 0. Two ranks over gloo, spawned here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from services.trainer.config import TrainerConfig
from services.trainer.loop.policy_round import PolicyRounds
from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.parallel.coordinator import Coordinator
from services.trainer.parallel.group import DataParallel, exit_rank
from services.trainer.parallel.worker import Worker
from services.trainer.stop_token import StopToken, TrainingInterrupted
from shared.kafka.broker import free_port
from shared.models.store import ModelStore

CONFIG = PPOConfig(batch_size=4, mini_batch_size=2, epochs=2, max_new_tokens=6, seed=3)
PROMPTS = ["User: how do I boil an egg?\nAssistant:", "User: hi\nAssistant:"]


def short_answer_reward(prompts, responses):
    return [-abs(len(r.split()) - 3) / 3.0 for r in responses]


def checkpoint_digest(checkpoint: Path) -> str:
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def rank_main(rank: int, world_size: int, port: int, store_root: str, work_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    store, checkpoint, out = ModelStore(store_root), Path(work_dir) / "policy-checkpoint", Path(work_dir)
    group = DataParallel.from_env("gloo", timeout_s=120)
    try:
        if group.is_main:
            stop = StopToken()
            stop_when_scored = {"now": False}

            def reward(prompts, responses):  # the stop comes while rank 0 scores its shard of the rollout
                if stop_when_scored["now"]:
                    stop.request_stop()
                return short_answer_reward(prompts, responses)

            coordinator = Coordinator(group)
            rounds = PolicyRounds(store, checkpoint, reward, lambda *_: CONFIG, coordinator=coordinator, stop=stop)
            rounds.begin_round()
            rounds.run_step(PROMPTS, [])  # a whole data-parallel step, checkpointed
            finished = checkpoint_digest(checkpoint)
            stop_when_scored["now"] = True
            try:
                rounds.run_step(PROMPTS, [])
                abandoned = ""
            except TrainingInterrupted as exc:
                abandoned = str(exc)
            coordinator.stop()
            result = {
                "abandoned": abandoned,
                "checkpoint_kept": checkpoint_digest(checkpoint) == finished,
                "trainer_dropped": rounds.trainer is None,
            }
            (out / "rank0.json").write_text(json.dumps(result))
        else:
            worker = Worker(TrainerConfig(model_store=store_root, torch_threads=1), group, short_answer_reward)
            (out / "worker.json").write_text(json.dumps({"exit_code": worker.run()}))
        group.all_gather_rows(torch.ones(1, 1))  # both ranks still answer the group afterwards
    except BaseException:
        group.close()
        raise
    exit_rank(0, group)  # as the launcher does: gloo's teardown at interpreter exit can abort


@pytest.mark.slow  # two spawned ranks import torch and transformers: ~20-40 s on 2 cores
def test_a_stop_on_rank_zero_leaves_the_step_on_every_rank_together(tiny_lm_dir, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", lambda out: shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True))
    mp.spawn(rank_main, args=(2, free_port(), str(store.root), str(tmp_path)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    assert rank0["abandoned"].startswith("data-parallel PPO step 2 (update)"), rank0
    assert rank0["checkpoint_kept"] and rank0["trainer_dropped"], rank0
    assert json.loads((tmp_path / "worker.json").read_text()) == {"exit_code": 0}
