"""The policy service end to end: a real gRPC server on a free port, the real
broker, a tiny real GPT-2. Calls go through the generated stubs (and once
through server reflection, as a generic client like grpcurl would)."""

from __future__ import annotations

import math
import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from shared.kafka import events
from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2, policy_pb2_grpc
from tests.helpers import read_topic, wait_until

MAX_MESSAGE_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def policy(broker, tiny_lm_dir):
    config = PolicyConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        kafka=broker.bootstrap,
        model_dir=str(tiny_lm_dir),
        policy_version="v7",
        max_new_tokens_cap=64,
        max_return_sequences=3,
        max_message_bytes=MAX_MESSAGE_BYTES,
        grace_period_s=5,
        log_format="text",
    )
    service = PolicyService(config)
    service.start()
    yield service
    service.stop(grace_s=1)


@pytest.fixture(scope="module")
def channel(policy):
    with grpc.insecure_channel(f"127.0.0.1:{policy.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return policy_pb2_grpc.PolicyServiceStub(channel)


def generate(stub, prompt="User: how do I boil an egg?\nAssistant:", **sampling):
    request = policy_pb2.GenerateRequest(prompt=prompt, sampling=common_pb2.SamplingParams(**sampling))
    return stub.Generate(request, timeout=30)


def test_health_is_serving_once_loaded(channel):
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="rlhf.v1.PolicyService"), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_generate_answers_and_publishes_a_generation_event(stub, broker):
    request = policy_pb2.GenerateRequest(
        prompt="User: what is the capital of France?\nAssistant:",
        user_id="u-42",
        metadata={"app": "test"},
        sampling=common_pb2.SamplingParams(max_new_tokens=12, temperature=0.8, seed=5),
    )
    response, call = stub.Generate.with_call(request, timeout=30)
    request_id = dict(call.initial_metadata())["x-request-id"]
    assert response.model_version == "v7" and response.request_id == request_id
    assert response.prompt_tokens > 0
    (completion,) = response.completions
    assert completion.generation_id and 1 <= completion.completion_tokens <= 12
    assert completion.finish_reason in (events_pb2.FINISH_REASON_LENGTH, events_pb2.FINISH_REASON_EOS)

    def published():
        records = read_topic(broker.bootstrap, events.GENERATIONS_TOPIC, events_pb2.GenerationEvent, timeout_s=2)
        return [(r, e) for r, e in records if e.generation_id == completion.generation_id]

    ((record, event),) = wait_until(published, timeout_s=15, message="GenerationEvent on the topic")
    assert record.key == completion.generation_id.encode()
    assert event.response == completion.text and event.model_version == "v7"
    assert event.request_id == request_id and event.user_id == "u-42" and event.metadata == {"app": "test"}
    assert event.sampling.seed == 5 and event.sampling.max_new_tokens == 12
    assert event.prompt_tokens == response.prompt_tokens
    assert event.prompt == request.prompt and not event.messages  # a raw prompt is encoded as sent


def test_num_return_sequences_gives_one_id_per_sequence(stub):
    response = generate(stub, max_new_tokens=8, num_return_sequences=3, seed=1)
    assert [c.index for c in response.completions] == [0, 1, 2]
    assert len({c.generation_id for c in response.completions}) == 3


def test_stream_deltas_add_up_to_the_generated_text(stub):
    sampling = dict(max_new_tokens=20, temperature=1.0, seed=11)
    full = generate(stub, **sampling).completions[0]
    request = policy_pb2.GenerateRequest(
        prompt="User: how do I boil an egg?\nAssistant:", sampling=common_pb2.SamplingParams(**sampling)
    )
    chunks = list(stub.GenerateStream(request, timeout=30))
    assert "".join(c.text_delta for c in chunks) == full.text
    assert chunks[-1].finish_reason == full.finish_reason != events_pb2.FINISH_REASON_UNSPECIFIED
    assert all(c.model_version == "v7" and c.generation_id == chunks[0].generation_id for c in chunks)


def test_stop_string_cuts_before_it(stub):
    sampling = dict(max_new_tokens=30, temperature=1.0, seed=3)
    text = generate(stub, **sampling).completions[0].text
    stop = text[8:10]
    assert stop, f"sampled text too short to pick a stop string: {text!r}"
    completion = generate(stub, stop=[stop], **sampling).completions[0]
    assert completion.text == text[: text.find(stop)]
    assert completion.finish_reason == events_pb2.FINISH_REASON_STOP_SEQUENCE


def test_same_seed_gives_same_text_even_when_batched(stub):
    sampling = dict(max_new_tokens=24, temperature=0.9, top_p=0.95, top_k=40, seed=1234)
    alone = generate(stub, **sampling).completions[0].text
    results: dict[int, str] = {}

    def call(i):
        if i == 0:
            results[i] = generate(stub, **sampling).completions[0].text
        else:  # different prompts, lengths and params in the same batch
            generate(stub, prompt="hello " * i, max_new_tokens=10 + i, temperature=0.5, seed=i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == alone


def test_model_info(stub, tiny_lm_dir):
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    assert info.kind == common_pb2.MODEL_KIND_POLICY and info.version == "v7"
    assert info.architecture == "GPT2LMHeadModel" and info.num_parameters > 0
    assert info.context_window == 128
    assert info.limits["max_new_tokens"] == 64 and info.limits["num_return_sequences"] == 3
    assert info.default_sampling.max_new_tokens == 64
    assert not info.has_chat_template  # the tiny GPT-2 has none: `messages` is refused


def test_a_reflection_client_can_discover_and_call_generate(channel):
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(channel)
    assert "rlhf.v1.PolicyService" in database.get_services()
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("rlhf.v1.PolicyService").FindMethodByName("Generate")
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    request = request_cls(prompt="User: hi\nAssistant:")
    request.sampling.max_new_tokens = 4
    call = channel.unary_unary(
        "/rlhf.v1.PolicyService/Generate",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    response = call(request, timeout=30)
    assert response.model_version == "v7" and len(response.completions) == 1


def test_metrics_show_the_requests(stub, policy):
    generate(stub, max_new_tokens=5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{policy.metrics_port}/metrics", timeout=5).read().decode()
    for name in (
        "rlhf_time_to_first_token_seconds_count",
        "rlhf_e2e_request_latency_seconds_count",
        "rlhf_generation_tokens_total",
        "rlhf_prompt_tokens_total",
        "rlhf_batch_size_count",
        "rlhf_num_requests_running",
        "rlhf_num_requests_waiting",
    ):
        assert name in body, name
    assert 'rlhf_rpc_requests_total{code="OK",method="Generate",service="policy"}' in body
    assert 'rlhf_model_info{architecture="GPT2LMHeadModel",kind="policy",version="v7"} 1.0' in body
    tokens = [line for line in body.splitlines() if line.startswith("rlhf_generation_tokens_total")]
    assert float(tokens[0].split()[-1]) >= 5


@pytest.mark.parametrize(
    "prompt, sampling, field, says",
    [
        ("", {}, "prompt", "must not be empty"),
        ("word " * 300, {}, "prompt", "context window is 128 tokens"),
        ("hi", {"max_new_tokens": 0}, "sampling.max_new_tokens", ">= 1"),
        ("hi", {"max_new_tokens": 65}, "sampling.max_new_tokens", "<= 64"),
        ("hi", {"temperature": -0.5}, "sampling.temperature", ">= 0"),
        ("hi", {"temperature": math.nan}, "sampling.temperature", ">= 0"),
        ("hi", {"top_p": 0.0}, "sampling.top_p", "(0, 1]"),
        ("hi", {"top_p": 1.5}, "sampling.top_p", "(0, 1]"),
        ("hi", {"top_k": -1}, "sampling.top_k", ">= 0"),
        ("hi", {"num_return_sequences": 0}, "sampling.num_return_sequences", "[1, 3]"),
        ("hi", {"num_return_sequences": 4}, "sampling.num_return_sequences", "[1, 3]"),
        ("x" * (MAX_MESSAGE_BYTES + 10), {}, "request", f"limit is {MAX_MESSAGE_BYTES} bytes"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_limit(stub, prompt, sampling, field, says):
    with pytest.raises(grpc.RpcError) as info:
        generate(stub, prompt=prompt, **sampling)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field + ":") and says in info.value.details(), info.value.details()


def test_prompt_too_long_says_its_token_count(stub):
    with pytest.raises(grpc.RpcError) as info:
        generate(stub, prompt="word " * 300)
    assert "tokens; the model's context window is 128" in info.value.details()


def test_bad_input_on_stream_is_invalid_argument(stub):
    request = policy_pb2.GenerateRequest(prompt="hi", sampling=common_pb2.SamplingParams(top_k=-3))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.GenerateStream(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_messages_need_a_model_with_a_chat_template(stub):
    request = policy_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role="user", content="hi")],
        sampling=common_pb2.SamplingParams(max_new_tokens=4),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("messages:") and "no chat template" in info.value.details()
    request.prompt = "User: hi\nAssistant:"
    with pytest.raises(grpc.RpcError) as both:
        stub.Generate(request, timeout=30)
    assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in both.value.details()
