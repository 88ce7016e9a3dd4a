"""A stop request reaches inside long work (services.trainer.stop_token): every policy
method's step, in its generation and in its optimisation, the gate's sampling, the reward
update and a reward call in flight are abandoned at their next safe point, leaving the
checkpoint and the store as they were, and a restart resumes from the last finished step.

The stop is requested from inside the work itself (a counting hook on the policy's forward
passes, the reward function, the data source), so where it lands is exact, not timed."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from services.trainer.data.preference_sets import PreferencePair, RatedResponse
from services.trainer.data.training_sets import Comparison
from services.trainer.loop.heldout import HeldoutSplit
from services.trainer.loop.policy_round import PolicyRounds
from services.trainer.loop.reward_update import RewardUpdateSettings, update_reward_model
from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.dpo.kto_config import KTOConfig
from services.trainer.methods.policy_gradient.grpo_config import GRPOConfig
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.reward_client import RewardClient
from services.trainer.stop_token import StopToken, TrainingInterrupted
from shared.grpc.server import GrpcServer, ServiceBinding
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import reward_pb2, reward_pb2_grpc
from shared.service_config import ServiceConfig

PROMPTS = ["User: how do I boil an egg?\nAssistant:", "User: what is 2+2?\nAssistant:"]
GOOD, BAD = "the answer is here, see", "no no no no"
LORA = dict(lora_rank=4, lora_alpha=8, num_threads=1)
SAMPLED = dict(batch_size=2, samples_per_prompt=2, mini_batch_size=2, max_new_tokens=6, **LORA)
JUDGED = dict(batch_size=4, mini_batch_size=2, max_response_length=8, **LORA)
CONFIGS = {
    "ppo": PPOConfig(**SAMPLED),
    "ppo-full-weights": PPOConfig(**{**SAMPLED, "lora_rank": 0}),
    "rloo": RLOOConfig(**SAMPLED),
    "grpo": GRPOConfig(**SAMPLED),
    "dpo": DPOConfig(**JUDGED),
    "kto": KTOConfig(**JUDGED),
}
JUDGED_ANSWERS = {
    "dpo": [PreferencePair(p, GOOD, BAD) for p in PROMPTS],
    "kto": [RatedResponse(p, GOOD, True) for p in PROMPTS] + [RatedResponse(p, BAD, False) for p in PROMPTS],
}


class StopFrom:
    """Requests the stop from inside the work: at the n-th forward pass of the policy
    (a hook registered before the loop's own watch, so it fires first on the same pass),
    or when the reward function or the data source is called."""

    def __init__(self, stop: StopToken):
        self.stop = stop
        self.forwards = 0
        self.at_forward: int | None = None
        self.in_reward = False
        self.requested_after = -1  # forward passes counted when the stop was requested

    def request(self) -> None:
        if not self.stop.is_set():
            self.stop.request_stop()
            self.requested_after = self.forwards

    def count(self, _module, _inputs) -> None:
        self.forwards += 1
        if self.at_forward is not None and self.forwards >= self.at_forward:
            self.request()

    def in_backward(self, _module, _inputs, output) -> None:
        """A forward hook on the last layer: the stop comes as that layer's gradient arrives."""
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.requires_grad:
            hidden.register_hook(lambda _grad: self.request())

    def reward(self, prompts, responses):
        if self.in_reward:
            self.request()
        return [-abs(len(r.split()) - 3) / 3.0 for r in responses]


def checkpoint_bytes(checkpoint: Path) -> dict[str, str]:
    return {
        str(p.relative_to(checkpoint)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def store(tiny_store, tmp_path):
    shutil.copytree(tiny_store, tmp_path / "store")
    return ModelStore(tmp_path / "store")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rounds_for(store, checkpoint: Path, name: str, stop: StopToken, stopper: StopFrom) -> PolicyRounds:
    method = name.split("-")[0]
    answers = JUDGED_ANSWERS.get(method)
    source = None
    if answers is not None:

        def source():
            if stopper.in_reward:  # the preference methods' "scoring": their examples, read at the step's start
                stopper.request()
            return answers

    config = CONFIGS[name]
    reward = stopper.reward
    return PolicyRounds(store, checkpoint, reward, lambda *_: config, method=method, data_source=source, stop=stop)


SAMPLING = ("ppo", "ppo-full-weights", "rloo", "grpo")
PHASES = [(name, "generation") for name in SAMPLING] + [(n, p) for n in CONFIGS for p in ("update", "backward")]


def last_layer(lm: torch.nn.Module) -> torch.nn.Module:
    stacks = [m for m in lm.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(stacks, key=len)[-1]


@pytest.mark.parametrize("name,phase", PHASES)
def test_a_step_stopped_midway_is_abandoned_and_the_checkpoint_resumes(store, tmp_path, name, phase):
    checkpoint = tmp_path / "state" / "policy-checkpoint"
    stop = StopToken()
    stopper = StopFrom(stop)
    rounds = rounds_for(store, checkpoint, name, stop, stopper)
    rounds.begin_round()
    rounds.run_step(PROMPTS, [])
    finished = checkpoint_bytes(checkpoint)
    assert rounds.trainer is not None and rounds.trainer.step_count == 1

    policy = rounds.trainer.policy
    policy.get_input_embeddings().register_forward_pre_hook(stopper.count)
    if phase == "generation":
        stopper.at_forward = 3  # the third generated token of the rollout (max_new_tokens 6)
    elif phase == "update":
        stopper.in_reward = True  # between the rollout (or the examples) and the first minibatch
    else:
        last_layer(policy).register_forward_hook(stopper.in_backward)  # the first minibatch's backward
    with pytest.raises(TrainingInterrupted, match="step 2 of round 1"):
        rounds.run_step(PROMPTS, [])
    if phase == "generation":
        assert stopper.forwards == 3, "the rollout's generation was left at the token the stop came in"
    elif phase == "update":
        assert stopper.forwards == stopper.requested_after + 1, "left at the update's first forward pass"
    else:
        assert stopper.requested_after > 0 and stopper.forwards == stopper.requested_after, "left in the backward"

    assert rounds.trainer is None, "the half-updated weights in memory are dropped"
    assert checkpoint_bytes(checkpoint) == finished, "the last finished step's checkpoint, untouched"
    assert not list(checkpoint.parent.glob(".policy-checkpoint.*")), "nothing half-written beside it"
    assert store.versions("policy") == ["v1"]

    restarted = rounds_for(store, checkpoint, name, StopToken(), StopFrom(StopToken()))
    assert restarted.ensure_trainer().step_count == 1 and restarted.resumed_from_step == 1
    assert restarted.round_active and restarted.steps_done() == 1
    assert restarted.run_step(PROMPTS, []).step == 1, "the abandoned step is taken again"


def test_the_gates_sampling_is_abandoned_too(store, tmp_path):
    stop = StopToken()
    rounds = rounds_for(store, tmp_path / "state" / "policy-checkpoint", "rloo", stop, StopFrom(stop))
    rounds.begin_round()
    stop.request_stop()
    with pytest.raises(TrainingInterrupted, match="the gate's evaluation of v1"):
        rounds.evaluate(PROMPTS, samples_per_prompt=2, max_new_tokens=6, version="v1")


COMPARISONS = [Comparison(f"Q: what is {n} plus {n}?\nA:", f"It is {2 * n}, here is how.", "No.") for n in range(40)]
SPLIT = HeldoutSplit(2)


def test_a_reward_update_stopped_in_its_heldout_scoring_stores_nothing(store):
    stop = StopToken()
    stop.request_stop()
    settings = RewardUpdateSettings(min_new_comparisons=1, steps=2, tolerance=1.0, batch_size=4, min_heldout_pairs=2)
    with pytest.raises(TrainingInterrupted, match="reward update of v1 .*held-out"):
        update_reward_model(store, None, settings, COMPARISONS, COMPARISONS, SPLIT, threads=1, stop=stop)
    assert store.versions("reward") == ["v1"] and store.current("reward") == "v1"


def test_a_reward_update_stopped_while_it_trains_stores_nothing(store):
    stop = StopToken()
    # Ten million steps: it could never end on its own; whenever the stop lands, nothing is stored.
    endless = RewardUpdateSettings(
        min_new_comparisons=1, steps=10_000_000, tolerance=1.0, batch_size=4, min_heldout_pairs=2
    )
    timer = threading.Timer(1.0, stop.request_stop)
    timer.start()
    try:
        with pytest.raises(TrainingInterrupted, match="reward update of v1"):
            update_reward_model(store, None, endless, COMPARISONS, COMPARISONS, SPLIT, threads=1, stop=stop)
    finally:
        timer.cancel()
    assert store.versions("reward") == ["v1"] and store.current("reward") == "v1"


class SlowReward(reward_pb2_grpc.RewardServiceServicer):
    """Answers after ``delay_s``: a reward service that hangs (overloaded, or going away)."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.called = threading.Event()

    def ScoreBatch(self, request, context):
        self.called.set()
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.05)
        return reward_pb2.ScoreBatchResponse(scores=[0.0] * len(request.items), model_version="v1")


def test_a_reward_call_in_flight_is_cancelled_by_the_stop():
    servicer = SlowReward(delay_s=300)  # far beyond the test: only the cancellation ends the call
    server = GrpcServer(
        ServiceConfig(port=0, metrics_port=-1, host="127.0.0.1", grace_period_s=0),
        "slow-reward",
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
    stop = StopToken()
    client = RewardClient(f"127.0.0.1:{port}", timeout_s=600, stop=stop)
    try:
        threading.Thread(target=lambda: servicer.called.wait(60) and stop.request_stop(), daemon=True).start()
        with pytest.raises(TrainingInterrupted, match="reward service"):
            client(["Q: hi?\nA:"], ["Hello."])
    finally:
        client.close()
        server.stop(0)
