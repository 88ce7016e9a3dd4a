"""Chat `messages` through the real policy gRPC server and the real broker: a
tiny Llama-style model with a chat template (its tokenizer adds a BOS) answers
a chat, and the GenerationEvent carries the rendered prompt (what the trainer
encodes) and the messages (for apps)."""

from __future__ import annotations

import grpc
import pytest
from transformers import AutoTokenizer

from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from shared.kafka import events
from shared.models.prompting import ChatMessage, encode_prompt, render_chat
from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2, policy_pb2_grpc
from tests.foreign_models import CHAT_TEMPLATE_NO_BOS, build_tiny_llama
from tests.helpers import read_topic, wait_until

CHAT = [("system", "You are terse."), ("user", "how do I boil an egg?")]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("chat-llama"), chat_template=CHAT_TEMPLATE_NO_BOS)


@pytest.fixture(scope="module")
def stub(broker, llama_dir):
    config = PolicyConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        kafka=broker.bootstrap,
        model_dir=str(llama_dir),
        policy_version="chat-v1",
        max_new_tokens_cap=16,
        default_max_new_tokens=8,
        max_chat_messages=3,
        grace_period_s=5,
        log_format="text",
    )
    service = PolicyService(config)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield policy_pb2_grpc.PolicyServiceStub(channel)
    service.stop(grace_s=1)


def chat_request(messages=CHAT, **fields) -> policy_pb2.GenerateRequest:
    return policy_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
        sampling=common_pb2.SamplingParams(max_new_tokens=6, temperature=0.7, seed=3),
        **fields,
    )


def test_a_chat_is_answered_and_its_event_carries_the_rendered_prompt(stub, broker, llama_dir):
    response = stub.Generate(chat_request(user_id="u-chat"), timeout=30)
    (completion,) = response.completions
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    rendered = render_chat(tokenizer, [ChatMessage(r, c) for r, c in CHAT])
    assert response.model_version == "chat-v1"
    assert response.prompt_tokens == len(encode_prompt(tokenizer, rendered))

    def published():
        records = read_topic(broker.bootstrap, events.GENERATIONS_TOPIC, events_pb2.GenerationEvent, timeout_s=2)
        return [e for _, e in records if e.generation_id == completion.generation_id]

    (event,) = wait_until(published, timeout_s=15, message="the chat's GenerationEvent")
    assert event.prompt == rendered and event.prompt.endswith("<|assistant|>\n")
    assert [(m.role, m.content) for m in event.messages] == CHAT
    assert event.response == completion.text and event.user_id == "u-chat"
    assert event.prompt_tokens == response.prompt_tokens


def test_a_chat_streams_too(stub):
    chunks = list(stub.GenerateStream(chat_request(), timeout=30))
    assert chunks and chunks[-1].finish_reason != events_pb2.FINISH_REASON_UNSPECIFIED


def test_model_info_says_the_model_has_a_chat_template(stub):
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    assert info.has_chat_template and info.architecture == "LlamaForCausalLM"
    assert info.limits["max_chat_messages"] == 3


@pytest.mark.parametrize(
    "request_fields, field, says",
    [
        (dict(prompt="User: hi\nAssistant:"), "messages", "not both"),
        (dict(messages=[("user", "hi"), ("robot", "beep")]), "messages[1].role", "expected one of system, user"),
        (dict(messages=[("", "hi")]), "messages[0].role", "is ''"),
        (dict(messages=[("user", "")]), "messages[0].content", "must not be empty"),
        (dict(messages=[("user", "hi")] * 4), "messages", "has 4 messages; the limit is 3"),
        (dict(messages=[("user", "word " * 300)]), "messages", "context window is 256 tokens"),
    ],
)
def test_bad_chats_are_invalid_argument_naming_the_field(stub, request_fields, field, says):
    messages = request_fields.pop("messages", CHAT)
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(chat_request(messages, **request_fields), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field + ":") and says in info.value.details(), info.value.details()
