"""Fuzzing every RPC's request fields (hypothesis) against real in-process servers.

PolicyService (Generate, GenerateStream, GetModelInfo) with a tiny GPT-2,
RewardService (Score, ScoreBatch, GetModelInfo) with the MiniLM reward model,
FeedbackService (SubmitFeedback, SubmitFeedbackBatch) and the TrainerService
controls (GetStatus, Promote, Rollback, Pause, Resume) on the real broker.
Whatever a client can send, the answer is a result or a status that says what
was wrong (INVALID_ARGUMENT, NOT_FOUND, ...), never INTERNAL or UNKNOWN (a
server bug).
"""

from __future__ import annotations

import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.feedback.config import FeedbackConfig
from services.feedback.server import FeedbackGatewayServer
from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from services.reward.config import RewardConfig
from services.reward.server import RewardServer
from services.trainer.config import TrainerConfig
from services.trainer.server import TrainerServer
from shared.kafka import events
from shared.models.reward.format import save_reward_model
from shared.models.reward.minilm import new_reward_model
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import (
    common_pb2,
    events_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.helpers import start_group_at_end
from tests.integration.test_trainer_service import copy_dir

SERVER_BUGS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
# CI runs a fixed, modest set of examples; RLHF_FUZZ_SCALE=20 explores 20x as many, freshly random.
SCALE = float(os.environ.get("RLHF_FUZZ_SCALE", "1"))

TEXT = st.text(max_size=60)
INT32 = st.integers(-(2**31), 2**31 - 1)
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


def optional(strategy):
    return st.one_of(st.none(), strategy)


def fuzz(method, requests, *, examples: int = 40, stream: bool = False) -> set[str]:
    """Call ``method`` with ``examples`` requests drawn from ``requests`` (draining a
    stream); a status is fine unless it is a server bug. Returns the codes seen, so
    a test can check the fuzzing reached both answers and refusals."""
    seen: set[str] = set()

    @settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=SCALE <= 1,
    )
    @given(request=requests)
    def one(request):
        try:
            reply = method(request, timeout=60)
            if stream:
                list(reply)
            seen.add("OK")
        except grpc.RpcError as exc:
            assert exc.code() not in SERVER_BUGS, f"{exc.code().name}: {exc.details()} for {request!r}"
            seen.add(exc.code().name)

    one()
    return seen


def fields(**values):
    """Keyword arguments without the unset (None) ones."""
    return {k: v for k, v in values.items() if v is not None}


# --- policy ---------------------------------------------------------------------------
SAMPLING = st.builds(
    lambda max_new, temperature, top_p, top_k, stop, seed, n: common_pb2.SamplingParams(
        **fields(
            max_new_tokens=max_new,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            num_return_sequences=n,
        ),
        stop=stop,
    ),
    optional(st.one_of(st.integers(1, 4), st.integers(-2, 6), INT32)),
    optional(st.one_of(st.floats(0, 2, width=32), FLOAT32)),
    optional(st.one_of(st.floats(0, 1, width=32), FLOAT32)),
    optional(st.one_of(st.integers(0, 400), INT32)),
    st.one_of(st.just([]), st.lists(st.text(max_size=300), max_size=9)),
    optional(st.integers(-(2**63), 2**63 - 1)),
    optional(st.one_of(st.integers(1, 2), INT32)),
)
GENERATE = st.builds(
    lambda prompt, messages, sampling, user, metadata: policy_pb2.GenerateRequest(
        prompt=prompt, messages=messages, sampling=sampling, user_id=user, metadata=metadata
    ),
    st.one_of(TEXT, st.just("User: hi\nAssistant:"), st.text(min_size=300, max_size=2000)),
    st.one_of(
        st.just([]),
        st.lists(
            st.builds(
                common_pb2.ChatMessage,
                role=st.sampled_from(["user", "assistant", "system", "", "x"]) | TEXT,
                content=TEXT,
            ),
            max_size=4,
        ),
    ),
    SAMPLING,
    TEXT,
    st.dictionaries(TEXT, TEXT, max_size=3),
)


@pytest.fixture(scope="module")
def policy(broker, tiny_lm_dir):
    config = PolicyConfig(
        port=0,
        metrics_port=-1,
        kafka=broker.bootstrap,
        model_dir=str(tiny_lm_dir),
        policy_version="v1",
        max_new_tokens_cap=4,
        default_max_new_tokens=4,
        max_return_sequences=2,
        max_message_bytes=64 * 1024,
        grace_period_s=1,
        torch_threads=1,
    )
    service = PolicyService(config)
    service.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    yield policy_pb2_grpc.PolicyServiceStub(channel)
    channel.close()
    service.stop(grace_s=1)


def test_generate(policy):
    assert {"OK", "INVALID_ARGUMENT"} <= fuzz(policy.Generate, GENERATE, examples=60)


def test_generate_stream(policy):
    assert {"OK", "INVALID_ARGUMENT"} <= fuzz(policy.GenerateStream, GENERATE, examples=40, stream=True)


def test_policy_model_info(policy):
    assert fuzz(policy.GetModelInfo, st.just(common_pb2.GetModelInfoRequest()), examples=1) == {"OK"}


# --- reward ---------------------------------------------------------------------------
PAIR = st.builds(reward_pb2.ScoreRequest, prompt=st.one_of(TEXT, st.text(min_size=190, max_size=260)), response=TEXT)


@pytest.fixture(scope="module")
def reward(tmp_path_factory):
    store = ModelStore(tmp_path_factory.mktemp("fuzz-reward-store"))
    model, tokenizer = new_reward_model(max_length=32)
    store.write_version("reward", lambda out: save_reward_model(model, tokenizer, out))
    config = RewardConfig(
        port=0,
        metrics_port=-1,
        model_store=str(store.root),
        backend="torch",
        watch_updates=False,
        max_batch_size=4,
        max_prompt_chars=200,
        max_response_chars=200,
        threads=1,
        grace_period_s=1,
    )
    server = RewardServer(config)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield reward_pb2_grpc.RewardServiceStub(channel)
    channel.close()
    server.stop(1)


def test_score(reward):
    assert {"OK", "INVALID_ARGUMENT"} <= fuzz(reward.Score, PAIR)


def test_score_batch(reward):
    batches = st.lists(PAIR, max_size=6).map(lambda items: reward_pb2.ScoreBatchRequest(items=items))
    assert {"OK", "INVALID_ARGUMENT"} <= fuzz(reward.ScoreBatch, batches)


def test_reward_model_info(reward):
    assert fuzz(reward.GetModelInfo, st.just(common_pb2.GetModelInfoRequest()), examples=1) == {"OK"}


# --- feedback -------------------------------------------------------------------------
def _event(feedback_id, generation_id, user_id, seconds, nanos, source, comment, kind, a, b, number, enum, metadata):
    event = events_pb2.FeedbackEvent(
        feedback_id=feedback_id,
        generation_id=generation_id,
        user_id=user_id,
        source=source,
        comment=comment,
        metadata=metadata,
    )
    if seconds is not None:
        event.created_at.seconds, event.created_at.nanos = seconds, nanos
    if kind == "score":
        event.rating.score = number
    elif kind == "thumb":
        event.rating.thumb = enum
    elif kind == "preference":
        event.preference.chosen_generation_id, event.preference.rejected_generation_id = a, b
    elif kind == "correction":
        event.correction.response = a
    elif kind == "flag":
        event.flag.category = enum
    elif kind == "deletion":
        event.deletion.reason = a
    return event


FEEDBACK = st.builds(
    _event,
    st.one_of(st.uuids().map(str), st.just(""), TEXT, st.text(min_size=129, max_size=140)),
    st.one_of(st.uuids().map(str), st.just(""), TEXT),
    # Accepted events reach the session's feedback topic, which other tests' trainers read:
    # a fuzzed deletion request must not name their users.
    st.one_of(st.just(""), TEXT.map("fuzz-".__add__), st.text(min_size=125, max_size=140).map("fuzz-".__add__)),
    optional(st.one_of(st.integers(0, 2**32), st.integers(-(2**40), 2**40))),
    st.one_of(st.integers(0, 999_999_999), INT32),
    st.integers(-3, 5),
    st.one_of(TEXT, st.text(min_size=3990, max_size=4010)),
    st.sampled_from(["score", "thumb", "preference", "correction", "flag", "deletion", None]),
    TEXT,
    TEXT,
    st.one_of(st.floats(-1, 1), st.floats(allow_nan=True, allow_infinity=True)),
    st.integers(-3, 6),
    st.dictionaries(TEXT, TEXT, max_size=3),
)


@pytest.fixture(scope="module")
def feedback(broker):
    config = FeedbackConfig(port=0, metrics_port=-1, kafka=broker.bootstrap, rate_limit=0, grace_period_s=1)
    server = FeedbackGatewayServer(config)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield feedback_pb2_grpc.FeedbackServiceStub(channel)
    channel.close()
    server.stop(1)


def test_submit_feedback(feedback):
    requests = FEEDBACK.map(lambda event: feedback_pb2.SubmitFeedbackRequest(feedback=event))
    assert {"OK", "INVALID_ARGUMENT"} <= fuzz(feedback.SubmitFeedback, requests, examples=60)


def test_submit_feedback_batch(feedback):
    requests = st.lists(FEEDBACK, max_size=4).map(lambda b: feedback_pb2.SubmitFeedbackBatchRequest(feedback=b))
    assert "INVALID_ARGUMENT" in fuzz(feedback.SubmitFeedbackBatch, requests)


# --- trainer controls -----------------------------------------------------------------
KIND = st.one_of(st.sampled_from([1, 2, 0]), INT32)
VERSION = st.one_of(
    st.sampled_from(["", "v1", "v2", "v3", "v0", "v1\n", "v\u0663", "../v1", "v99999999999999999999"]), TEXT
)
CONTROLS = {
    "Promote": st.builds(trainer_pb2.PromoteRequest, kind=KIND, version=VERSION, reason=TEXT),
    "Rollback": st.builds(trainer_pb2.RollbackRequest, kind=KIND, to_version=VERSION, reason=TEXT),
    "Pause": st.builds(trainer_pb2.PauseRequest, reason=st.text(max_size=3000)),
    "Resume": st.just(trainer_pb2.ResumeRequest()),
    "GetStatus": st.just(trainer_pb2.GetStatusRequest()),
}


@pytest.fixture(scope="module")
def trainer(broker, tiny_lm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-trainer")
    store = ModelStore(root / "store")
    for _ in range(2):
        store.write_version("policy", copy_dir(tiny_lm_dir))
    config = TrainerConfig(
        port=0,
        metrics_port=-1,
        kafka=broker.bootstrap,
        model_store=str(store.root),
        state_dir=str(root / "state"),
        consumer_group=f"fuzz-trainer-{root.name}",
        grace_period_s=1,
        torch_threads=1,
        round_check_s=3600,
    )
    # The group starts where the session's topics end: what earlier tests left there is no part of this test.
    start_group_at_end(broker.bootstrap, config.consumer_group, [events.GENERATIONS_TOPIC, events.FEEDBACK_TOPIC])
    server = TrainerServer(config, reward_fn=lambda prompts, responses: [0.0] * len(prompts))
    port = server.start(train=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield trainer_pb2_grpc.TrainerServiceStub(channel)
    channel.close()
    server.stop(1)


def test_trainer_controls(trainer):
    for method, requests in CONTROLS.items():
        codes = fuzz(getattr(trainer, method), requests, examples=25)
        assert "INTERNAL" not in codes, method  # (fuzz asserts it per call; this names the method)
