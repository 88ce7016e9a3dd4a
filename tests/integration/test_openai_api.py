"""The OpenAI-compatible front door end to end, called with the official `openai`
client: a real policy service (a tiny Llama with a chat template), a real
feedback gateway, the real broker, and the front door on a free port, all in
this process with bearer-token auth on."""

from __future__ import annotations

import json
import socket
import threading

import openai
import pytest
from prometheus_client import REGISTRY

from rlhf_cli.stack import Stack, http_health_status
from services.feedback.config import FeedbackConfig
from services.feedback.server import FeedbackGatewayServer
from services.openai_api.config import OpenAIApiConfig
from services.openai_api.server import OpenAIApiServer
from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from shared.kafka import events
from shared.proto.rlhf.v1 import events_pb2
from tests.foreign_models import CHAT_TEMPLATE_NO_BOS, build_tiny_llama
from tests.helpers import free_port_offset, read_topic, wait_until

TOKEN = "front-door-token"
VERSION = "v5"
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "how do I boil an egg?"}]


@pytest.fixture(scope="module")
def policy(broker, tmp_path_factory):
    llama_dir = build_tiny_llama(tmp_path_factory.mktemp("front-llama"), chat_template=CHAT_TEMPLATE_NO_BOS)
    config = PolicyConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        kafka=broker.bootstrap,
        model_dir=str(llama_dir),
        policy_version=VERSION,
        auth_token=TOKEN,
        max_new_tokens_cap=16,
        default_max_new_tokens=8,
        max_return_sequences=2,
        grace_period_s=5,
        log_format="text",
    )
    service = PolicyService(config)
    service.start()
    yield service
    service.stop(grace_s=1)


@pytest.fixture(scope="module")
def gateway(broker):
    config = FeedbackConfig(
        port=0, metrics_port=-1, kafka=broker.bootstrap, auth_token=TOKEN, grace_period_s=1, max_correction_chars=40
    )
    server = FeedbackGatewayServer(config)
    port = server.start()
    yield f"127.0.0.1:{port}"
    server.stop(1)


def front_door(policy_addr: str, feedback_addr: str, **overrides) -> OpenAIApiServer:
    settings = dict(host="127.0.0.1", port=0, metrics_port=-1, auth_token=TOKEN, grace_period_s=5)
    settings.update(overrides)
    server = OpenAIApiServer(OpenAIApiConfig(policy_addr=policy_addr, feedback_addr=feedback_addr, **settings))
    server.start()
    return server


@pytest.fixture(scope="module")
def front(policy, gateway):
    server = front_door(f"127.0.0.1:{policy.port}", gateway)
    yield server
    server.stop(grace_s=1)


def client_for(server: OpenAIApiServer, api_key: str = TOKEN) -> openai.OpenAI:
    # max_retries=0: a refused request must surface as its own error, not be retried.
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def client(front):
    with client_for(front) as c:
        yield c


def generation_events(broker, generation_ids):
    wanted = set(generation_ids)

    def found():
        records = read_topic(broker.bootstrap, events.GENERATIONS_TOPIC, events_pb2.GenerationEvent, timeout_s=2)
        hits = {e.generation_id: e for _, e in records if e.generation_id in wanted}
        return hits if set(hits) == wanted else None

    return wait_until(found, timeout_s=20, message=f"GenerationEvents {sorted(wanted)}")


def requests_counted(route: str, status: int) -> float:
    return REGISTRY.get_sample_value("rlhf_http_requests_total", {"route": route, "status": str(status)}) or 0.0


def test_chat_completion_with_two_choices_names_each_by_its_generation_id(client, broker):
    before = requests_counted("/v1/chat/completions", 200)
    raw = client.chat.completions.with_raw_response.create(
        model="rlhf-policy",
        messages=CHAT,
        n=2,
        max_completion_tokens=6,
        temperature=0.9,
        seed=11,
        user="u-front",
        metadata={"app": "front-door-test"},
        extra_headers={"x-request-id": "req-front-1"},
    )
    completion = raw.parse()
    assert raw.headers["x-request-id"] == "req-front-1"
    assert completion.object == "chat.completion" and completion.model == "rlhf-policy"
    assert completion.system_fingerprint == VERSION
    assert [c.index for c in completion.choices] == [0, 1]
    ids = [c.generation_id for c in completion.choices]
    assert completion.id == ids[0] and len(set(ids)) == 2
    assert all(c.finish_reason in ("stop", "length") and c.message.role == "assistant" for c in completion.choices)

    published = generation_events(broker, ids)
    for choice in completion.choices:
        event = published[choice.generation_id]
        assert event.request_id == "req-front-1" and event.user_id == "u-front"
        assert event.metadata["app"] == "front-door-test" and event.model_version == VERSION
        assert event.response == choice.message.content
        assert [(m.role, m.content) for m in event.messages] == [(m["role"], m["content"]) for m in CHAT]
    usage = completion.usage
    assert usage.prompt_tokens == published[ids[0]].prompt_tokens
    assert usage.completion_tokens == sum(published[i].completion_tokens for i in ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert requests_counted("/v1/chat/completions", 200) == before + 1


def test_streamed_chat_arrives_as_chunks_then_usage_then_done(client, broker):
    stream = client.chat.completions.create(
        model="rlhf-policy",
        messages=CHAT,
        max_tokens=8,
        temperature=0.8,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    *text_chunks, usage_chunk = chunks
    assert text_chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    generation_id = text_chunks[0].id
    assert all(c.id == generation_id and c.system_fingerprint == VERSION for c in chunks)
    assert text_chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in text_chunks][-1] in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in text_chunks)

    event = generation_events(broker, [generation_id])[generation_id]
    assert event.response == text
    assert usage_chunk.choices == []
    assert usage_chunk.usage.prompt_tokens == event.prompt_tokens
    assert usage_chunk.usage.completion_tokens == event.completion_tokens


def test_the_stream_ends_with_data_done_on_the_wire(client):
    with client.chat.completions.with_streaming_response.create(
        model="rlhf-policy", messages=CHAT, max_tokens=4, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events_ = [line for line in response.iter_lines() if line]
    assert events_[-1] == "data: [DONE]"
    assert all(line.startswith("data: {") for line in events_[:-1])
    assert json.loads(events_[0].removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_text_completion_with_a_raw_prompt(client, broker):
    first = client.completions.create(model="rlhf-policy", prompt="The quick brown fox", max_tokens=5, temperature=0)
    again = client.completions.create(model="rlhf-policy", prompt=["The quick brown fox"], max_tokens=5, temperature=0)
    assert first.object == "text_completion" and first.system_fingerprint == VERSION
    (choice,) = first.choices
    assert choice.text == again.choices[0].text  # greedy: same prompt, same text
    assert first.id == choice.generation_id != again.id
    event = generation_events(broker, [first.id])[first.id]
    assert event.prompt == "The quick brown fox" and event.response == choice.text and not event.messages
    assert first.usage.prompt_tokens == event.prompt_tokens


def test_models_lists_the_served_model_and_its_version(client):
    (model,) = client.models.list().data
    assert model.id == "rlhf-policy" and model.owned_by == "rlhf-loop"
    assert model.version == VERSION and model.has_chat_template and model.max_tokens_cap == 16
    assert client.models.retrieve("rlhf-policy").version == VERSION
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"temperature": 5}, "temperature"),  # checked here: OpenAI's range is [0, 2]
        ({"max_tokens": 1000}, "max_tokens"),  # the policy's cap (16): its INVALID_ARGUMENT, mapped back
        ({"max_completion_tokens": 1000}, "max_completion_tokens"),
        ({"n": 3}, "n"),  # the policy's --max-return-sequences (2)
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_bad_chat_input_is_a_bad_request_naming_the_param(client, fields, param):
    messages = fields.get("messages", CHAT)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="rlhf-policy", messages=messages, extra_body={k: v for k, v in fields.items() if k != "messages"}
        )
    error = caught.value
    assert error.status_code == 400 and error.param == param and error.type == "invalid_request_error"
    assert error.body["message"].startswith(param)


def test_unknown_model_is_not_found_and_a_wrong_token_is_refused(client, front):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert caught.value.code == "model_not_found"
    with client_for(front, api_key="wrong") as intruder, pytest.raises(openai.AuthenticationError):
        intruder.chat.completions.create(model="rlhf-policy", messages=CHAT)


def test_the_token_is_passed_on_to_the_policy(policy, gateway):
    # No token check at the front door: the policy's own AuthInterceptor refuses the
    # wrong token it receives, and its UNAUTHENTICATED comes back as 401.
    open_door = front_door(f"127.0.0.1:{policy.port}", gateway, auth_token="")
    try:
        with client_for(open_door, api_key="wrong") as c, pytest.raises(openai.AuthenticationError):
            c.models.list()
        with client_for(open_door) as c:
            assert c.models.list().data[0].version == VERSION
    finally:
        open_door.stop(grace_s=1)


def test_a_policy_that_cannot_be_reached_is_service_unavailable(gateway):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    door = front_door(f"127.0.0.1:{closed_port}", gateway, upstream_timeout_s=10)
    try:
        with client_for(door) as c, pytest.raises(openai.InternalServerError) as caught:
            c.chat.completions.create(model="rlhf-policy", messages=CHAT)
        assert caught.value.status_code == 503 and caught.value.type == "server_error"
    finally:
        door.stop(grace_s=1)


def test_feedback_on_completion_ids_lands_on_the_feedback_topic(client, broker):
    completion = client.chat.completions.create(model="rlhf-policy", messages=CHAT, n=2, max_tokens=4, user="u-fb")
    chosen, rejected = (c.generation_id for c in completion.choices)
    thumb = client.post(
        "/feedback", body={"id": completion.id, "user": "u-fb", "thumb": "up", "comment": "short"}, cast_to=object
    )
    preference = client.post(
        "/feedback", body={"user": "u-fb", "preference": {"chosen": chosen, "rejected": rejected}}, cast_to=object
    )
    assert thumb["object"] == "feedback" and thumb["generation_id"] == completion.id and thumb["kind"] == "thumb"
    assert preference["generation_id"] == chosen and not preference["duplicate"]

    def on_topic():
        records = read_topic(broker.bootstrap, events.FEEDBACK_TOPIC, events_pb2.FeedbackEvent, timeout_s=2)
        hits = {e.feedback_id: e for _, e in records if e.feedback_id in (thumb["id"], preference["id"])}
        return hits if len(hits) == 2 else None

    hits = wait_until(on_topic, timeout_s=20, message="both FeedbackEvents")
    up = hits[thumb["id"]]
    assert up.generation_id == completion.id and up.user_id == "u-fb" and up.comment == "short"
    assert up.rating.thumb == events_pb2.THUMB_UP and up.source == events_pb2.FEEDBACK_SOURCE_END_USER
    pair = hits[preference["id"]]
    assert (pair.preference.chosen_generation_id, pair.preference.rejected_generation_id) == (chosen, rejected)
    assert pair.generation_id == chosen


@pytest.mark.parametrize(
    "body, param",
    [
        ({"id": "g-1", "rating": 3}, "rating"),  # checked here
        ({"id": "g-1", "correction": "x" * 41}, "correction"),  # the gateway's --max-correction-chars, mapped back
        ({"rating": 0.5}, "id"),  # the gateway: generation_id is required
        ({"id": "g-1", "thumb": "up", "flag": "unsafe"}, "flag"),
    ],
)
def test_bad_feedback_is_a_bad_request_naming_the_param(client, body, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/feedback", body=body, cast_to=object)
    assert caught.value.param == param


def test_oversized_bodies_and_unknown_routes_get_errors_in_openai_format(policy, gateway):
    door = front_door(f"127.0.0.1:{policy.port}", gateway, max_request_bytes=1024)
    try:
        with client_for(door) as c:
            with pytest.raises(openai.APIStatusError) as too_big:
                c.chat.completions.create(model="rlhf-policy", messages=[{"role": "user", "content": "x" * 4096}])
            with pytest.raises(openai.NotFoundError) as no_route:
                c.post("/embeddings", body={"model": "rlhf-policy", "input": "x"}, cast_to=object)
            assert c.models.list().data  # the refused body was read and dropped: the client goes on
        assert too_big.value.status_code == 413 and "--max-request-bytes" in too_big.value.message
        assert no_route.value.code == "not_found"
    finally:
        door.stop(grace_s=1)


def test_stop_lets_an_open_stream_finish_and_refuses_new_connections(policy, gateway):
    door = front_door(f"127.0.0.1:{policy.port}", gateway, grace_period_s=60)
    address = f"127.0.0.1:{door.port}"
    assert http_health_status(address) == "SERVING"
    with client_for(door) as c:
        stream = c.chat.completions.create(model="rlhf-policy", messages=CHAT, max_tokens=16, stream=True)
        first = next(iter(stream))
        stopper = threading.Thread(target=door.stop)
        stopper.start()
        wait_until(lambda: http_health_status(address) == "UNREACHABLE", timeout_s=30, message="listener closed")
        rest = list(stream)
    stopper.join(timeout=60)
    assert not stopper.is_alive()
    assert first.choices[0].delta.role == "assistant"
    assert (rest[-1] if rest else first).choices[0].finish_reason in ("stop", "length")


def test_rlhf_stack_starts_the_front_door_and_sigterm_stops_it_cleanly(broker, tmp_path):
    # The processes `rlhf up` starts (no policy here): readiness through GET /health,
    # feedback through the front door to the gateway, exit code 0 on SIGTERM.
    stack = Stack(
        model_store=tmp_path / "store",
        log_dir=tmp_path / "logs",
        services=["feedback", "openai_api"],
        kafka=broker.bootstrap,
        port_offset=free_port_offset(),
    )
    try:
        stack.start_broker()
        stack.start_services(ready_timeout_s=120)
        base_url = f"http://{stack.address('openai_api')}/v1"
        with openai.OpenAI(base_url=base_url, api_key="no-auth-here", max_retries=0) as c:
            receipt = c.post("/feedback", body={"id": "g-stack", "flag": "wrong"}, cast_to=object)
            with pytest.raises(openai.InternalServerError) as caught:
                c.models.list()  # no policy in this stack
        assert receipt["generation_id"] == "g-stack" and caught.value.status_code == 503
    finally:
        codes = stack.stop(timeout_s=60)
    assert codes == {"openai_api": 0, "feedback": 0}
