"""The README's OpenAI chat example against the demo's own model: the bootstrap's pre-training step
(demo.bootstrap.pretrain_step, a reduced config) builds the demo tokenizer with its chat template, so
/v1/chat/completions renders a user message to exactly the "User: ...\\nAssistant:" frame the demo
policy is trained in. A real policy service, feedback gateway and front door, on the session broker."""

from __future__ import annotations

from typing import Any, cast

import pytest

from demo.world import build_prompts, format_prompt
from services.feedback.config import FeedbackConfig
from services.feedback.server import FeedbackGatewayServer
from services.openai_api.config import OpenAIApiConfig
from services.openai_api.server import OpenAIApiServer
from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from shared.kafka import events
from shared.proto.rlhf.v1 import events_pb2
from tests.helpers import read_topic, wait_until

QUESTION = "How do I boil an egg?"


@pytest.fixture(scope="module")
def demo_model_dir(tmp_path_factory):
    from demo.bootstrap import pretrain_step
    from demo.bootstrap_config import reduced_config

    out = tmp_path_factory.mktemp("demo-policy")
    pretrain_step(reduced_config(pretrain_steps=2), out, progress=False)
    return out


def test_the_demo_tokenizer_renders_chat_in_the_training_frame(demo_model_dir):
    from transformers import AutoTokenizer

    from shared.models.prompting import ChatMessage, render_chat

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)  # as saved: the template travels with it
    for prompt in build_prompts()[:5]:
        assert render_chat(tokenizer, [ChatMessage("user", prompt.question)]) == prompt.text
    chat = [ChatMessage("user", "q1"), ChatMessage("assistant", "a1"), ChatMessage("user", "q2")]
    assert render_chat(tokenizer, chat) == "User: q1\nAssistant: a1\nUser: q2\nAssistant:"


@pytest.fixture(scope="module")
def front(broker, demo_model_dir):
    policy = PolicyService(
        PolicyConfig(
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            kafka=broker.bootstrap,
            model_dir=str(demo_model_dir),
            policy_version="v1",
            max_new_tokens_cap=16,
            default_max_new_tokens=8,
            grace_period_s=5,
            log_format="text",
        )
    )
    policy.start()
    gateway = FeedbackGatewayServer(FeedbackConfig(port=0, metrics_port=-1, kafka=broker.bootstrap, grace_period_s=1))
    gateway_port = gateway.start()
    server = OpenAIApiServer(
        OpenAIApiConfig(
            policy_addr=f"127.0.0.1:{policy.port}",
            feedback_addr=f"127.0.0.1:{gateway_port}",
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            grace_period_s=5,
        )
    )
    server.start()
    yield server
    server.stop(grace_s=1)
    gateway.stop(1)
    policy.stop(grace_s=1)


def test_readme_chat_example_works_on_the_demo_model(front, broker):
    import openai

    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{front.port}/v1", api_key="anything", max_retries=0, timeout=60
    ) as client:
        reply = client.chat.completions.create(
            model="rlhf-policy", messages=[{"role": "user", "content": QUESTION}], n=2, max_tokens=8, user="u42"
        )
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="rlhf-policy", stream=True, max_tokens=4, messages=[{"role": "user", "content": "And a pancake?"}]
            )
            if chunk.choices
        )
    assert len(reply.choices) == 2 and reply.system_fingerprint == "v1" and isinstance(streamed, str)
    ids = {cast(Any, c).generation_id for c in reply.choices}  # the front door's extra field

    def published():
        records = read_topic(broker.bootstrap, events.GENERATIONS_TOPIC, events_pb2.GenerationEvent, timeout_s=2)
        hits = [e for _, e in records if e.generation_id in ids]
        return hits if len(hits) == 2 else None

    for event in wait_until(published, timeout_s=20, message="the chat's GenerationEvents"):
        assert event.prompt == format_prompt(QUESTION) == f"User: {QUESTION}\nAssistant:"
