"""The front door's core without a network: OpenAI bodies → policy and feedback
protos, gRPC failures → OpenAI errors, policy replies → OpenAI objects and SSE."""

from __future__ import annotations

import json

import pytest

from services.openai_api import feedback as fb
from services.openai_api import generation, responses
from services.openai_api.api_errors import ApiError, UpstreamError, from_upstream
from services.openai_api.config import OpenAIApiConfig
from services.openai_api.fields import parse_json_object
from shared.config import ConfigError
from shared.proto.rlhf.v1 import events_pb2, feedback_pb2, policy_pb2

MODEL = "rlhf-policy"
USER = {"role": "user", "content": "hi"}


def chat(**fields):
    return generation.parse_chat({"model": MODEL, "messages": [USER], **fields}, MODEL)


def refusal(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fn(*args)
    return caught.value


def test_a_chat_body_maps_onto_the_generate_request():
    call = generation.parse_chat(
        {
            "model": MODEL,
            "messages": [
                {"role": "developer", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": "boil "}, {"type": "text", "text": "an egg"}]},
            ],
            "max_completion_tokens": 12,
            "temperature": 0.5,
            "top_p": 0.9,
            "n": 2,
            "stop": "\n",
            "seed": 7,
            "user": "u-1",
            "metadata": {"app": "x"},
            "logprobs": False,
            "tools": [],
            "store": True,
        },
        MODEL,
    )
    request = call.request
    assert [(m.role, m.content) for m in request.messages] == [("system", "Be terse."), ("user", "boil an egg")]
    s = request.sampling
    assert (s.max_new_tokens, s.temperature, s.num_return_sequences, list(s.stop), s.seed) == (12, 0.5, 2, ["\n"], 7)
    assert s.top_p == pytest.approx(0.9) and not s.HasField("top_k")
    assert request.user_id == "u-1" and dict(request.metadata) == {"app": "x"} and not request.prompt
    assert call.kind == "chat" and not call.stream
    assert dict(call.params)["sampling.max_new_tokens"] == "max_completion_tokens"


def test_unset_sampling_fields_stay_unset_so_the_policy_defaults_apply():
    sampling = chat().request.sampling
    assert not any(sampling.HasField(name) for name in ("max_new_tokens", "temperature", "top_p", "seed"))


def test_a_text_completion_takes_one_prompt():
    call = generation.parse_text({"model": MODEL, "prompt": ["Once"], "max_tokens": 3, "stream": True}, MODEL)
    assert call.request.prompt == "Once" and call.kind == "text" and call.stream
    assert refusal(generation.parse_text, {"model": MODEL, "prompt": ["a", "b"]}, MODEL).param == "prompt"
    assert refusal(generation.parse_text, {"model": MODEL, "prompt": [1, 2]}, MODEL).param == "prompt"
    assert refusal(generation.parse_text, {"model": MODEL}, MODEL).code == "missing_required_parameter"


@pytest.mark.parametrize(
    "fields, param, code",
    [
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"temperature": True}, "temperature", "invalid_type"),
        ({"n": 0}, "n", "invalid_value"),
        ({"seed": 2**63}, "seed", "invalid_value"),
        ({"stop": [1]}, "stop", "invalid_type"),
        ({"user": "u" * 129}, "user", "invalid_value"),
        ({"metadata": {"k": 1}}, "metadata.k", "invalid_type"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"stream": True, "stream_options": {"x": 1}}, "stream_options.x", "unknown_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]", None),
        (
            {"messages": [USER, {"role": "assistant", "content": "", "tool_calls": [{}]}]},
            "messages[1].tool_calls",
            None,
        ),
        ({"messages": [{"role": "user", "content": "x", "colour": "red"}]}, "messages[0].colour", None),
        ({"bogus": 1}, "bogus", "unknown_parameter"),
    ],
)
def test_chat_fields_we_cannot_use_are_refused_by_name(fields, param, code):
    with pytest.raises(ApiError) as caught:
        chat(**fields)
    error = caught.value
    assert (error.status, error.param) == (400, param) and error.message.startswith(param)
    if code:
        assert error.code == code


def test_model_must_be_the_served_id():
    assert refusal(generation.parse_chat, {"messages": [USER]}, MODEL).status == 400
    error = refusal(generation.parse_chat, {"model": "gpt-4o", "messages": [USER]}, MODEL)
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")


def test_a_body_that_is_not_a_json_object_is_refused():
    assert refusal(parse_json_object, b"{not json").status == 400
    assert refusal(parse_json_object, b"[1, 2]").status == 400
    assert parse_json_object(b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    "code, status",
    [
        ("INVALID_ARGUMENT", 400),
        ("UNAUTHENTICATED", 401),
        ("PERMISSION_DENIED", 403),
        ("NOT_FOUND", 404),
        ("RESOURCE_EXHAUSTED", 429),
        ("UNAVAILABLE", 503),
        ("INTERNAL", 500),
        ("UNKNOWN", 500),
    ],
)
def test_grpc_status_codes_map_to_http_statuses(code, status):
    error = from_upstream(UpstreamError(code, "details", None, "policy"))
    assert error.status == status
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_an_invalid_argument_names_the_body_param_and_keeps_the_retry_hint():
    call = chat(max_tokens=1000)
    error = from_upstream(UpstreamError("INVALID_ARGUMENT", "sampling.max_new_tokens: must be <= 16"), call.params)
    assert (error.param, error.message) == ("max_tokens", "max_tokens: must be <= 16")
    nested = from_upstream(UpstreamError("INVALID_ARGUMENT", "messages[2].role: is 'x'"), call.params)
    assert nested.param == "messages[2].role"
    unmapped = from_upstream(UpstreamError("INVALID_ARGUMENT", "request: message is too big"), call.params)
    assert unmapped.param is None and unmapped.message == "request: message is too big"
    busy = from_upstream(UpstreamError("RESOURCE_EXHAUSTED", "queue full", 2.5, "policy"))
    assert (busy.status, busy.retry_after_s, busy.type) == (429, 2.5, "rate_limit_error")


def test_feedback_bodies_map_onto_feedback_events():
    thumb = fb.parse_feedback({"id": "g1", "user": "u", "thumb": "down", "comment": "meh", "source": "annotator"})
    event = thumb.feedback
    assert (event.generation_id, event.user_id, event.comment) == ("g1", "u", "meh")
    assert event.rating.thumb == events_pb2.THUMB_DOWN and event.source == events_pb2.FEEDBACK_SOURCE_ANNOTATOR
    assert fb.parse_feedback({"generation_id": "g1", "rating": -0.5}).feedback.rating.score == -0.5
    pair = fb.parse_feedback({"preference": {"chosen": "a", "rejected": "b"}}).feedback
    assert (pair.generation_id, pair.preference.chosen_generation_id, pair.preference.rejected_generation_id) == (
        "",
        "a",
        "b",
    )
    assert fb.parse_feedback({"id": "g", "correction": "better"}).feedback.correction.response == "better"
    assert fb.parse_feedback({"id": "g", "flag": "unsafe"}).feedback.flag.category == events_pb2.FLAG_CATEGORY_UNSAFE


@pytest.mark.parametrize(
    "body, param",
    [
        ({"id": "g"}, None),
        ({"id": "g", "rating": 1, "thumb": "up"}, "thumb"),
        ({"id": "g", "rating": 1.5}, "rating"),
        ({"id": "g", "thumb": "sideways"}, "thumb"),
        ({"id": "g", "flag": "rude"}, "flag"),
        ({"id": "g", "generation_id": "h", "rating": 1}, "generation_id"),
        ({"preference": {"chosen": "a"}}, "preference.rejected"),
        ({"id": "g", "rating": 1, "stars": 5}, "stars"),
        ({"ranking": "a,b"}, "ranking"),
        ({"ranking": ["a", ["b", 3]]}, "ranking[1]"),
        ({"ranking": ["a"], "rating": 1}, "ranking"),
    ],
)
def test_bad_feedback_bodies_are_refused_by_name(body, param):
    assert refusal(fb.parse_feedback, body).param == param


def test_a_ranking_body_maps_onto_ranked_groups_and_is_validated_as_the_gateway_does():
    from shared.feedback_rules import feedback_problems, fill_defaults

    request = fb.parse_feedback({"user": "u", "ranking": ["a", ["b", "c"], "d"]})
    ranking = request.feedback.ranking
    assert [list(g.generation_ids) for g in ranking.groups] == [["a"], ["b", "c"], ["d"]]
    receipt = fb.receipt_body(request, feedback_pb2.SubmitFeedbackResponse(feedback_id="f"))
    assert (receipt["kind"], receipt["generation_id"]) == ("ranking", "a")
    twice = fb.parse_feedback({"ranking": ["a", ["b", "a"]]}).feedback
    twice.feedback_id = "f"
    fill_defaults(twice)
    [(field, message)] = feedback_problems(twice, prefix="feedback.")
    problem = from_upstream(UpstreamError("INVALID_ARGUMENT", f"{field}: {message}"), fb.FEEDBACK_PARAMS)
    assert problem.param.startswith("ranking") and "ranked twice" in problem.message


def test_the_gateway_field_names_come_back_as_body_params():
    problem = UpstreamError("INVALID_ARGUMENT", "feedback.preference.chosen_generation_id: is required")
    assert from_upstream(problem, fb.FEEDBACK_PARAMS).param == "preference.chosen"
    kind = from_upstream(UpstreamError("INVALID_ARGUMENT", "feedback.kind: set exactly one"), fb.FEEDBACK_PARAMS)
    assert kind.param is None and kind.message == "set exactly one"


def reply(n: int = 2) -> policy_pb2.GenerateResponse:
    return policy_pb2.GenerateResponse(
        request_id="r",
        model_version="v9",
        prompt_tokens=4,
        completions=[
            policy_pb2.Completion(
                generation_id=f"g{i}",
                text=f"t{i}",
                finish_reason=events_pb2.FINISH_REASON_EOS,
                completion_tokens=3,
                index=i,
            )
            for i in reversed(range(n))
        ],
    )


def test_a_completion_body_carries_generation_ids_version_and_usage():
    body = responses.completion_body("chat", reply(), MODEL, created=5)
    assert body["id"] == "g0" and [c["generation_id"] for c in body["choices"]] == ["g0", "g1"]
    assert body["model"] == MODEL and body["system_fingerprint"] == "v9"
    assert body["choices"][1]["message"] == {"role": "assistant", "content": "t1", "refusal": None, "annotations": []}
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    text = responses.completion_body("text", reply(1), MODEL, created=5)
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "t0"
    assert text["choices"][0]["finish_reason"] == "stop"


def piece(index: int, delta: str, tokens: int, finish: int = 0) -> policy_pb2.GenerateStreamResponse:
    return policy_pb2.GenerateStreamResponse(
        generation_id=f"g{index}",
        index=index,
        text_delta=delta,
        completion_tokens=tokens,
        finish_reason=finish,
        model_version="v9",
        prompt_tokens=4,
    )


def test_stream_chunks_send_the_role_once_per_choice_and_usage_last():
    renderer = responses.ChunkRenderer("chat", MODEL, created=5, include_usage=True)
    chunks = [
        renderer.chunk(piece(0, "a", 1)),
        renderer.chunk(piece(1, "b", 1)),
        renderer.chunk(piece(0, "c", 2, events_pb2.FINISH_REASON_LENGTH)),
        renderer.chunk(piece(1, "d", 3, events_pb2.FINISH_REASON_STOP_SEQUENCE)),
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}] + [
        {"content": "c"},
        {"content": "d"},
    ]
    assert [c["id"] for c in chunks] == ["g0", "g1", "g0", "g1"] and all(c["usage"] is None for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length", "stop"]
    last = renderer.usage_chunk()
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_sse_frames_are_one_data_line_each():
    frame = responses.sse_event({"text": "two\nlines"})
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2
    assert json.loads(frame[6:]) == {"text": "two\nlines"}
    assert responses.SSE_DONE == b"data: [DONE]\n\n"


def test_config_refuses_what_it_cannot_run_with():
    with pytest.raises(ConfigError, match="--policy-addr"):
        OpenAIApiConfig(policy_addr="localhost")
    with pytest.raises(ConfigError, match="--max-request-bytes"):
        OpenAIApiConfig(max_request_bytes=10)
    assert OpenAIApiConfig().port == 8000
