"""Data-parallel training over torch.distributed (gloo, CPU): two ranks, each holding half
of a fixed global batch, take the same update step as one process on the whole
batch (within float tolerance); a whole step with sharded rollouts leaves both
ranks with the same weights; the online trainer's protocol (rank 0's
Coordinator, a Worker) keeps them in step through a resumed round; and the
reward model's Bradley-Terry steps agree with one process's too."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from services.trainer.config import TrainerConfig
from services.trainer.loop.policy_round import PolicyRounds
from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.methods.ppo.ppo_trainer import PPOTrainer
from services.trainer.methods.rollout import Rollout
from services.trainer.parallel.coordinator import Coordinator
from services.trainer.parallel.group import DataParallel, exit_rank
from services.trainer.parallel.worker import Worker
from shared.kafka.broker import free_port
from shared.models.store import ModelStore

# lr 1e-3 moves the weights well beyond the tolerance; AdamW's eps 1e-6 (not 1e-8) keeps it from
# blowing float rounding in near-zero gradients up to whole update steps (m / sqrt(v) ~ +-1).
CONFIG = PPOConfig(
    batch_size=4,
    mini_batch_size=2,
    epochs=2,
    max_new_tokens=8,
    ptx_batch_size=3,
    seed=3,
    learning_rate=1e-3,
    adam_eps=1e-6,
)
PROMPTS = [
    "User: how do I boil an egg?\nAssistant:",
    "User: what is the capital of France?\nAssistant:",
    "User: how do I water a plant? Please be brief.\nAssistant:",
    "User: hi\nAssistant:",
]
DEMOS = [
    ("User: how do I boil an egg?\nAssistant:", "Boil it for nine minutes."),
    ("User: hi\nAssistant:", "Hello."),
    ("User: what is the capital of France?\nAssistant:", "Paris."),
]
TENSOR_FIELDS = [
    "query_ids", "query_mask", "response_ids", "response_mask", "ended_with_eos", "logprobs", "ref_logprobs", "values"
]  # fmt: skip


def short_answer_reward(prompts, responses):
    return [-abs(len(r.split()) - 3) / 3.0 for r in responses]


def build_trainer(lm_dir: str) -> PPOTrainer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(lm_dir, local_files_only=True)
    return PPOTrainer(lm, AutoTokenizer.from_pretrained(lm_dir, local_files_only=True), short_answer_reward, CONFIG)


def weights(trainer: PPOTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}


def save_rollout(rollout: Rollout, scores: torch.Tensor, out: Path) -> None:
    save_file(
        {**{f: getattr(rollout, f).contiguous() for f in TENSOR_FIELDS}, "scores": scores},
        str(out / "rollout.safetensors"),
    )
    (out / "rollout.json").write_text(json.dumps({"prompts": rollout.prompts, "responses": rollout.responses}))


def load_rollout(out: Path) -> tuple[Rollout, torch.Tensor]:
    tensors = load_file(str(out / "rollout.safetensors"))
    texts = json.loads((out / "rollout.json").read_text())
    return Rollout(**texts, **{f: tensors[f] for f in TENSOR_FIELDS}), tensors["scores"]


def rank_main(rank: int, world_size: int, port: int, lm_dir: str, work_dir: str) -> None:
    """One rank: learn on its half of the saved rollout, then one whole data-parallel step."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    out = Path(work_dir)
    group = DataParallel.from_env("gloo", timeout_s=300)
    try:
        trainer = build_trainer(lm_dir)
        trainer.enable_data_parallel(group)
        rollout, scores = load_rollout(out)
        mine = torch.arange(len(rollout))[group.shard(len(rollout))]
        stats = trainer.learn(rollout.select(mine), scores[mine], DEMOS)  # select() trims this half's padding
        if group.is_main:
            save_file(weights(trainer), str(out / "after-learn.safetensors"))
            (out / "stats.json").write_text(json.dumps(stats.as_dict()))
        trainer.step(PROMPTS, DEMOS)  # sharded rollouts, each rank scoring its own
        digest = torch.tensor([sum(float(p.double().sum()) for p in trainer.model.parameters())], dtype=torch.float64)
        digests = group.all_gather_rows(digest)
        if group.is_main:
            (out / "digests.json").write_text(json.dumps(digests.tolist()))
    except BaseException:
        group.close()
        raise
    exit_rank(0, group)  # as the launcher does: gloo's teardown at interpreter exit can abort


@pytest.mark.slow  # two spawned ranks import torch and transformers: ~20-40 s on 2 cores
def test_two_ranks_take_the_same_update_step_as_one_process(tiny_lm_dir, tmp_path):
    torch.set_num_threads(1)
    sampler = build_trainer(str(tiny_lm_dir))
    rollout = sampler.rollout(PROMPTS)
    scores = sampler.score(rollout)
    save_rollout(rollout, scores, tmp_path)
    initial = weights(build_trainer(str(tiny_lm_dir)))
    single = build_trainer(str(tiny_lm_dir))
    single_stats = single.learn(rollout, scores, DEMOS).as_dict()
    expected = weights(single)

    mp.spawn(rank_main, args=(2, free_port(), str(tiny_lm_dir), str(tmp_path)), nprocs=2, join=True)

    after = load_file(str(tmp_path / "after-learn.safetensors"))
    assert after.keys() == expected.keys()
    moved = max(float((expected[k] - initial[k]).abs().max()) for k in expected)
    assert moved > 1e-3, "the step changed the weights (so agreeing below means something)"
    for name, tensor in expected.items():
        torch.testing.assert_close(after[name], tensor, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    stats = json.loads((tmp_path / "stats.json").read_text())
    for name in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy", "ptx_loss", "kl", "mean_score"):
        assert stats[name] == pytest.approx(single_stats[name], rel=1e-4, abs=1e-6), name
    first, second = json.loads((tmp_path / "digests.json").read_text())
    assert first == pytest.approx(second, rel=1e-9), "both ranks hold the same weights after a sharded step"


def online_rank_main(rank: int, world_size: int, port: int, store_root: str, work_dir: str) -> None:
    """The online trainer's protocol: rank 0 (PolicyRounds + Coordinator) and a Worker."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    store, checkpoint = ModelStore(store_root), Path(work_dir) / "policy-checkpoint"
    group = DataParallel.from_env("gloo", timeout_s=300)
    try:
        if group.is_main:
            # One step alone first: optimizer moments, step count and KL coefficient only rank 0 has.
            alone = PolicyRounds(store, checkpoint, short_answer_reward, lambda *_: CONFIG)
            alone.begin_round()
            alone.run_step(PROMPTS, DEMOS)
            coordinator = Coordinator(group)
            rounds = PolicyRounds(store, checkpoint, short_answer_reward, lambda *_: CONFIG, coordinator=coordinator)
            rounds.ensure_trainer()  # resumes the checkpoint: the worker must be given all of its state
            for _ in range(2):
                rounds.run_step(PROMPTS, DEMOS)
            coordinator.stop()
            trainer = rounds.trainer
        else:
            worker = Worker(TrainerConfig(model_store=store_root, torch_threads=1), group, short_answer_reward)
            assert worker.run() == 0
            trainer = worker.trainer
        assert trainer is not None
        digest = sum(float(p.double().sum()) for p in trainer.model.parameters())
        state = torch.tensor([digest, trainer.step_count, trainer.kl_controller.value], dtype=torch.float64)
        gathered = group.all_gather_rows(state.unsqueeze(0))
        if group.is_main:
            (Path(work_dir) / "ranks.json").write_text(json.dumps(gathered.tolist()))
    except BaseException:
        group.close()
        raise
    exit_rank(0, group)  # as the launcher does: gloo's teardown at interpreter exit can abort


@pytest.mark.slow  # two spawned ranks, three PPO steps
def test_rank_zero_keeps_a_worker_in_step_through_a_resumed_round(tiny_lm_dir, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", lambda out: shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True))
    mp.spawn(online_rank_main, args=(2, free_port(), str(store.root), str(tmp_path)), nprocs=2, join=True)
    (digest0, steps0, kl0), (digest1, steps1, kl1) = json.loads((tmp_path / "ranks.json").read_text())
    assert steps0 == steps1 == 3, "the worker took rank 0's step count, then two steps with it"
    assert kl1 == kl0 and digest1 == pytest.approx(digest0, rel=1e-9), "same KL coefficient and weights"


REWARD_PAIRS = [
    ("User: how do I boil an egg?\nAssistant:", "Boil it for nine minutes.", "Ugh. Figure it out."),
    ("User: what is the capital of France?\nAssistant:", "Paris.", "I don't know, a city?"),
    ("User: hi\nAssistant:", "Hello! How can I help?", "What."),
    ("User: how do I water a plant?\nAssistant:", "Water the soil until damp.", "Plants are boring."),
    ("User: tell me a joke\nAssistant:", "Why did the egg cross the road?", "No."),
]
REWARD_TRAINING = dict(steps=3, batch_size=4, lr=1e-3, head_lr=1e-2, trainable_layers=1, warmup_steps=1)


def reward_model_without_dropout():
    """The bundled MiniLM reward model, dropout off: the ranks' dropout masks would differ
    from one process's, and this compares the gradient arithmetic, not the noise."""
    from shared.models.reward.minilm import new_reward_model

    model, tokenizer = new_reward_model(max_length=32, seed=0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model, tokenizer


def reward_rank_main(rank: int, world_size: int, port: int, work_dir: str) -> None:
    from services.trainer.supervised.reward_training import train_reward_model

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    group = DataParallel.from_env("gloo", timeout_s=300)
    try:
        model, tokenizer = reward_model_without_dropout()
        metrics = train_reward_model(model, tokenizer, REWARD_PAIRS, progress=False, parallel=group, **REWARD_TRAINING)
        if group.is_main:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(work_dir) / "reward.st"))
            (Path(work_dir) / "reward.json").write_text(json.dumps(metrics))
    except BaseException:
        group.close()
        raise
    exit_rank(0, group)  # as the launcher does: gloo's teardown at interpreter exit can abort


@pytest.mark.slow  # two spawned ranks load MiniLM
def test_two_ranks_train_the_reward_model_as_one_process(tmp_path):
    from services.trainer.supervised.reward_training import train_reward_model

    torch.set_num_threads(1)
    initial = {k: v.clone() for k, v in reward_model_without_dropout()[0].state_dict().items()}
    model, tokenizer = reward_model_without_dropout()
    single = train_reward_model(model, tokenizer, REWARD_PAIRS, progress=False, **REWARD_TRAINING)
    expected = model.state_dict()
    mp.spawn(reward_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    after = load_file(str(tmp_path / "reward.st"))
    moved = max(float((expected[k] - initial[k]).abs().max()) for k in expected)
    assert moved > 1e-3, "training changed the weights"
    # Adam's m / sqrt(v) turns float noise in a near-zero gradient into a step of either sign,
    # different for any two summation orders, so a few elements may differ by part of a
    # step: each tensor's update must agree as a whole (relative to its size). Some tensors
    # have a zero gradient in exact arithmetic, so their whole "update" is such noise and
    # they are left out: attention key biases (softmax ignores a shift shared by every key),
    # and the head's bias and the last LayerNorm's bias (they shift the chosen and the
    # rejected score alike; Bradley-Terry sees only the difference).
    noise_only = ("attention.self.key.bias", "head.bias", f"layer.{model.n_layers - 1}.output.LayerNorm.bias")
    compared = [name for name in expected if not name.endswith(noise_only)]
    assert len(compared) > 0.9 * len(expected)
    for name in compared:
        update = float((expected[name] - initial[name]).norm())
        difference = float((after[name] - expected[name]).norm())
        assert difference <= 1e-3 * update + 1e-7, f"{name}: differs by {difference:.3g}, its update is {update:.3g}"
    metrics = json.loads((tmp_path / "reward.json").read_text())
    for name in ("reward_loss_first", "reward_loss_final", "reward_train_accuracy_final"):
        assert metrics[name] == pytest.approx(single[name], rel=1e-4, abs=1e-6), name
