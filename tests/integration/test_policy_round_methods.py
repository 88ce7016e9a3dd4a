"""The loop's policy rounds run whichever --policy-method is configured, and a
restart (after kill -9) resumes that method's checkpoint exactly; a checkpoint of
another method is discarded, never loaded into the wrong trainer. DPO and KTO
rounds run through the online trainer itself, on the judged answers of a real ledger."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from prometheus_client import REGISTRY

from services.trainer.config import TrainerConfig
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.loop.online import OnlineTrainer
from services.trainer.loop.policy_round import PolicyRounds
from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.dpo.dpo_trainer import DPOTrainer
from services.trainer.methods.dpo.kto_trainer import KTOTrainer
from services.trainer.methods.policy_gradient.grpo_config import GRPOConfig
from services.trainer.methods.policy_gradient.pg_trainer import PolicyGradientTrainer
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
from shared.config import load_config
from shared.models.store import ModelStore
from tests.unit.test_ledger import preference, rating
from tests.unit.test_preference_sets import gen, prompt_where

PROMPTS = ["User: how do I boil an egg?\nAssistant:", "User: hi\nAssistant:", "User: what is 2+2?\nAssistant:"]
RLOO = RLOOConfig(batch_size=2, samples_per_prompt=2, mini_batch_size=2, max_new_tokens=6, num_threads=1)
GRPO = GRPOConfig(batch_size=2, samples_per_prompt=2, mini_batch_size=2, max_new_tokens=6, num_threads=1)


def short_answer_reward(prompts, responses):
    return [-abs(len(r.split()) - 3) / 3.0 for r in responses]


@pytest.fixture()
def store(tiny_store, tmp_path):
    shutil.copytree(tiny_store, tmp_path / "store")
    return ModelStore(tmp_path / "store")


def test_an_rloo_round_resumes_after_a_restart_and_another_method_starts_over(store, tmp_path):
    checkpoint = tmp_path / "state" / "policy-checkpoint"
    rounds = PolicyRounds(store, checkpoint, short_answer_reward, lambda *_: RLOO, method="rloo")
    rounds.begin_round()
    for _ in range(2):
        stats = rounds.run_step(PROMPTS, [(PROMPTS[0], "Boil it.")])
    assert isinstance(rounds.trainer, PolicyGradientTrainer) and rounds.trainer.method == "rloo"
    assert stats.step == 1 and rounds.steps_done() == 2

    restarted = PolicyRounds(store, checkpoint, short_answer_reward, lambda *_: RLOO, method="rloo")
    trainer = restarted.ensure_trainer()
    assert restarted.resumed_from_step == 2 and restarted.round_active and restarted.steps_done() == 2
    for a, b in zip(rounds.trainer.policy.state_dict().values(), trainer.policy.state_dict().values()):
        assert torch.equal(a, b)

    switched = PolicyRounds(store, checkpoint, short_answer_reward, lambda *_: GRPO, method="grpo")
    assert switched.ensure_trainer().step_count == 0 and switched.resumed_from_step is None
    assert switched.state is not None and switched.state.method == "grpo"
    switched.save_policy(tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_the_critic_free_methods_refuse_data_parallel(store, tmp_path):
    with pytest.raises(ValueError, match="under torchrun use --policy-method ppo"):
        PolicyRounds(
            store, tmp_path / "ckpt", short_answer_reward, lambda *_: RLOO, coordinator=object(), method="rloo"
        )


# --- DPO and KTO: the trainer's own wiring (OnlineTrainer -> PolicyRounds -> selector) on a real ledger ---


@pytest.fixture()
def policy_store(tiny_lm_dir, tmp_path):
    """A store holding only policy v1 (the tiny GPT-2): DPO and KTO need no reward model."""
    store = ModelStore(tmp_path / "policy-store")
    store.write_version("policy", lambda path: shutil.copytree(tiny_lm_dir, path, dirs_exist_ok=True))
    return store


def write_judged_answers(ledger_path) -> list[str]:
    """Two served answers to each of 3 training prompts and 1 held-out one; the user prefers
    the first, thumbs it up and thumbs the second down. Returns the training prompts."""
    writer = FeedbackLedger(ledger_path)  # the consumer's connection; the trainer reads through its own
    training = [prompt_where(False, n) for n in range(3)]
    for key, prompt in [(f"t{n}", p) for n, p in enumerate(training)] + [("h0", prompt_where(True))]:
        writer.record_generation(gen(f"{key}-a", prompt, "the answer is here, see", request=key))
        writer.record_generation(gen(f"{key}-b", prompt, "no no no no", request=key))
        writer.record_feedback(preference(f"pref-{key}", f"{key}-a", f"{key}-b"))
        writer.record_feedback(rating(f"up-{key}", f"{key}-a", 1.0))
        writer.record_feedback(rating(f"down-{key}", f"{key}-b", -1.0))
    writer.commit()
    writer.close()
    return training


def online_trainer(store, state_dir, method: str) -> OnlineTrainer:
    flags = ["--state-dir", str(state_dir), "--policy-method", method, "--torch-threads", "1"]
    flags += ["--policy-steps-per-round", "2", "--gate-heldout-one-in", "3"]  # prompt_where's split
    flags += [f"--{method}-batch-size", "4", f"--{method}-mini-batch-size", "2", f"--{method}-max-response-length", "8"]
    config = load_config(TrainerConfig, flags)
    # No promoter: with one held-out prompt the gate can only say heldout_too_small (keep training).
    return OnlineTrainer(config, store, promoter=None, reward_fn=short_answer_reward)


@pytest.mark.parametrize("method,trainer_class,examples", [("dpo", DPOTrainer, 3), ("kto", KTOTrainer, 6)])
def test_a_preference_round_learns_from_the_ledger_checkpoints_and_resumes(
    method, trainer_class, examples, policy_store, tmp_path
):
    state = tmp_path / "state"
    state.mkdir()
    write_judged_answers(state / "ledger.sqlite")
    steps_before = REGISTRY.get_sample_value("rlhf_policy_steps_total", {"method": method}) or 0.0

    online = online_trainer(policy_store, state, method)
    before = {k: v.clone() for k, v in online.rounds.ensure_trainer().policy.state_dict().items()}
    online._policy_round(None)
    trainer = online.rounds.trainer
    assert isinstance(trainer, trainer_class) and trainer.step_count == 2
    stats = online.last_policy_update
    assert stats.method == method and stats.examples_available == examples, "held-out prompt left out"
    assert math.isfinite(stats.policy_loss) and math.isfinite(stats.grad_norm)
    assert not all(torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())
    assert online.recent_candidates[-1].reason == "heldout_too_small"
    assert REGISTRY.get_sample_value("rlhf_policy_steps_total", {"method": method}) == steps_before + 2
    assert REGISTRY.get_sample_value("rlhf_policy_method", {"method": method}) == 1.0
    assert math.isnan(REGISTRY.get_sample_value("rlhf_policy_value_loss"))  # DPO/KTO have no critic
    assert json.loads(online.rounds.round_file.read_text())["method"] == method

    restarted = online_trainer(policy_store, state, method)  # after kill -9: the same state directory
    resumed = restarted.rounds.ensure_trainer()
    assert isinstance(resumed, trainer_class) and restarted.rounds.resumed_from_step == 2
    for a, b in zip(trainer.policy.state_dict().values(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b)
    restarted.rounds.begin_round()
    more = restarted.rounds.run_step(["unused: DPO and KTO read the ledger"], [])
    assert more.step == 2 and more.examples_available == examples

    # A state directory of the release before: the checkpoint under ppo-checkpoint/ is moved and resumed.
    (state / "policy-checkpoint").rename(state / "ppo-checkpoint")
    migrated = online_trainer(policy_store, state, method)
    assert not (state / "ppo-checkpoint").exists() and (state / "policy-checkpoint" / "trainer_state.json").is_file()
    assert migrated.rounds.ensure_trainer().step_count == 3 and migrated.rounds.resumed_from_step == 3

    other = "kto" if method == "dpo" else "dpo"
    switched = online_trainer(policy_store, state, other)
    assert switched.rounds.ensure_trainer().step_count == 0 and switched.rounds.resumed_from_step is None
    assert switched.rounds.state is not None and switched.rounds.state.method == other


def test_a_preference_method_needs_its_data_source(policy_store, tmp_path):
    rounds = PolicyRounds(policy_store, tmp_path / "ckpt", short_answer_reward, lambda *_: DPOConfig(), method="dpo")
    with pytest.raises(ValueError, match="dpo learns from the ledger's feedback: it needs a data_source"):
        rounds.ensure_trainer()
    with pytest.raises(ValueError, match="under torchrun use --policy-method ppo"):
        PolicyRounds(
            policy_store, tmp_path / "c", short_answer_reward, lambda *_: DPOConfig(), coordinator=1, method="kto"
        )
