"""A team's own model on the platform, end to end, with nothing of the demo.

A tiny Llama-style policy (a tokenizer that adds BOS, a chat template) and a
tiny sequence-classification reward model are built here, as a team would
bring them, and enter the store through `rlhf import`. The real reward,
policy, feedback and trainer services run as processes on the test broker.
Users chat (``messages``, two answers per request) on prompts that are not
the demo world's and send ordinary feedback (choices, thumbs, one
correction); the trainer updates the reward model, runs a policy round,
passes the gate on held-out prompts from this traffic, promotes, and the
serving replica hot-swaps: the next chat answer names the new version.
"""

from __future__ import annotations

import time

import grpc
import pytest

from rlhf_cli.stack import Stack
from shared.kafka import events
from shared.models.prompting import ChatMessage, encode_prompt, render_chat
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import (
    common_pb2,
    events_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.foreign_models import build_tiny_llama, build_tiny_seq_cls_reward
from tests.helpers import free_port_offset, read_topic, wait_until

pytestmark = pytest.mark.slow

# An app's own questions: arithmetic and translation, nothing the demo world knows.
QUESTIONS = [f"What is {a} plus {b}?" for a in range(2, 7) for b in range(3, 7)] + [
    f"Translate the word '{w}' into French." for w in ("cat", "dog", "house", "tree", "water", "bread")
]

# Small everything, so a round, the gate and a reward update happen within seconds.
TRAINER_ARGS = [
    "--reward-min-new-comparisons",
    "6",
    "--reward-min-heldout-comparisons",
    "1",
    "--reward-steps",
    "2",
    "--reward-accuracy-tolerance",
    "1.0",
    "--policy-min-prompts",
    "2",
    "--policy-min-new-feedback",
    "1",
    "--policy-steps-per-round",
    "2",
    "--ppo-batch-size",
    "2",
    "--ppo-mini-batch-size",
    "2",
    "--ppo-ptx-batch-size",
    "2",
    "--ppo-max-new-tokens",
    "6",
    "--gate-min-prompts",
    "2",
    "--gate-prompts",
    "4",
    "--gate-heldout-one-in",
    "3",
    "--gate-samples-per-prompt",
    "1",
    "--gate-min-reward-gain=-1e9",
    "--gate-confidence-z",
    "0",
    "--gate-kl-budget",
    "1e9",
    "--round-check-s",
    "0.5",
    "--feedback-hold-s",
    "120",
]


def chat(stub, question: str, user: str, version_seen: list[str]) -> policy_pb2.GenerateResponse:
    request = policy_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role="user", content=question)],
        user_id=user,
        sampling=common_pb2.SamplingParams(max_new_tokens=6, num_return_sequences=2, temperature=1.0),
    )
    response = stub.Generate(request, timeout=60)
    version_seen.append(response.model_version)
    return response


def test_own_llama_policy_learns_from_chat_feedback_and_is_hot_swapped(broker, tmp_path):
    from rlhf_cli.main import main

    store_root = tmp_path / "store"
    llama_dir = build_tiny_llama(tmp_path / "my-llama")
    reward_dir = build_tiny_seq_cls_reward(tmp_path / "my-reward")
    assert main(["import", "policy", str(llama_dir), "--model-store", str(store_root), "--set-current"]) == 0
    assert main(["import", "reward", str(reward_dir), "--model-store", str(store_root), "--set-current"]) == 0
    store = ModelStore(store_root)
    assert store.current("policy") == "v1" and store.current("reward") == "v1"

    stack = Stack(
        model_store=store_root,
        log_dir=tmp_path / "logs",
        services=["reward", "policy", "feedback", "trainer"],
        kafka=broker.bootstrap,
        port_offset=free_port_offset(),
        service_args={"trainer": TRAINER_ARGS + ["--consumer-group", f"own-model-{time.time_ns()}"]},
    )
    versions: list[str] = []
    try:
        stack.start_broker()  # with --kafka given: makes the log folder and the topics, starts no broker
        stack.start_services(ready_timeout_s=180)
        policy = policy_pb2_grpc.PolicyServiceStub(grpc.insecure_channel(stack.address("policy")))
        feedback = feedback_pb2_grpc.FeedbackServiceStub(grpc.insecure_channel(stack.address("feedback")))
        trainer = trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(stack.address("trainer")))
        assert policy.GetModelInfo(common_pb2.GetModelInfoRequest()).architecture == "LlamaForCausalLM"

        # Users chat and choose between two answers; some give a thumb; one rewrites an answer.
        batch = []
        for i, question in enumerate(QUESTIONS):
            answer = chat(policy, question, f"user-{i}", versions)
            first, second = answer.completions
            batch.append(
                events_pb2.FeedbackEvent(
                    feedback_id=f"pref-{i}",
                    generation_id=first.generation_id,
                    user_id=f"user-{i}",
                    preference=events_pb2.Preference(
                        chosen_generation_id=first.generation_id, rejected_generation_id=second.generation_id
                    ),
                )
            )
            batch.append(
                events_pb2.FeedbackEvent(
                    feedback_id=f"thumb-{i}",
                    generation_id=second.generation_id,
                    user_id=f"user-{i}",
                    rating=events_pb2.Rating(thumb=events_pb2.THUMB_DOWN),
                )
            )
            if i == 0:
                batch.append(
                    events_pb2.FeedbackEvent(
                        feedback_id="fix-0",
                        generation_id=first.generation_id,
                        user_id="user-0",
                        correction=events_pb2.Correction(response="It is five."),
                    )
                )
        accepted = feedback.SubmitFeedbackBatch(feedback_pb2.SubmitFeedbackBatchRequest(feedback=batch), timeout=30)
        assert len(accepted.results) == len(batch)

        def promoted(kind: int):
            status = trainer.GetStatus(trainer_pb2.GetStatusRequest(), timeout=5)
            return any(c.kind == kind and c.promoted for c in status.recent_candidates) and status

        wait_until(
            lambda: promoted(common_pb2.MODEL_KIND_REWARD),
            timeout_s=240,
            interval_s=1,
            message="a reward version trained on the users' comparisons",
        )
        status = wait_until(
            lambda: promoted(common_pb2.MODEL_KIND_POLICY),
            timeout_s=240,
            interval_s=1,
            message="a policy version promoted through the gate",
        )
        decided = [c for c in status.recent_candidates if c.kind == common_pb2.MODEL_KIND_POLICY and c.promoted][0]
        assert decided.reason == "passed" and decided.metrics["gate_prompts"] >= 2
        assert status.heldout.gate_prompts >= 2 and status.heldout.waiting_for == ""

        # The replica hot-swaps: chat answers now come from the promoted version.
        wait_until(
            lambda: chat(policy, QUESTIONS[0], "user-x", versions).model_version == decided.version,
            timeout_s=60,
            interval_s=0.5,
            message=f"serving {decided.version}",
        )
        manifest = store.manifest("policy", decided.version)
        assert manifest.parent_version == "v1"
        # Lineage: the reward service named the version that scored the candidate.
        assert manifest.notes["reward_version"] in store.versions("reward")
        assert manifest.notes["promoted_by"] == "trainer gate"
    finally:
        codes = stack.stop()
    assert all(code == 0 for code in codes.values()), codes

    # The trainer rebuilt the exact prompt the policy was served: the event carries the rendered chat.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    rendered = render_chat(tokenizer, [ChatMessage("user", QUESTIONS[0])])
    served = [
        m
        for _, m in read_topic(broker.bootstrap, events.GENERATIONS_TOPIC, events_pb2.GenerationEvent, timeout_s=10)
        if m.user_id == "user-0"
    ]
    assert served and all(g.prompt == rendered and g.messages[0].content == QUESTIONS[0] for g in served)
    ids = encode_prompt(tokenizer, rendered)
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert versions[0] == "v1" and versions[-1] == decided.version
