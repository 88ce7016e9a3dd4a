"""What each route does, independent of HTTP and of grpc: parse the body,
call the policy or feedback service through an ``Upstream``, answer with an
OpenAI object, a stream of SSE frames, or an ApiError.

A stream's first policy message is awaited before anything is sent, so a
request the policy refuses (bad field, queue full) gets a proper HTTP error
status; a failure after that arrives as an SSE ``{"error": ...}`` event, which
the OpenAI clients raise as APIError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.openai_api import feedback as fb
from services.openai_api import generation, responses
from services.openai_api.api_errors import ParamMap, UpstreamError, from_upstream, model_not_found
from services.openai_api.fields import parse_json_object
from shared.proto.rlhf.v1 import common_pb2, feedback_pb2, policy_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallContext:
    """What travels from the HTTP request to the gRPC call as metadata."""

    request_id: str
    authorization: str = ""  # the client's Authorization header, passed through as is
    client_id: str = ""  # the client's x-client-id header (the feedback gateway rate-limits per client)


class UpstreamStream(Protocol):
    def __iter__(self) -> Iterator[policy_pb2.GenerateStreamResponse]: ...
    def __next__(self) -> policy_pb2.GenerateStreamResponse: ...
    def cancel(self) -> None: ...


class Upstream(Protocol):
    """The gRPC services, as the adapter (upstream.py) offers them; failures raise UpstreamError."""

    def generate(self, request: policy_pb2.GenerateRequest, ctx: CallContext) -> policy_pb2.GenerateResponse: ...
    def generate_stream(self, request: policy_pb2.GenerateRequest, ctx: CallContext) -> UpstreamStream: ...
    def model_info(self, ctx: CallContext) -> common_pb2.ModelInfo: ...
    def submit_feedback(
        self, request: feedback_pb2.SubmitFeedbackRequest, ctx: CallContext
    ) -> feedback_pb2.SubmitFeedbackResponse: ...


@dataclass
class Reply:
    """A JSON answer."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamReply:
    """``text/event-stream`` frames; ``cancel`` stops the policy when the client goes away.
    ``failed`` turns true when the policy failed mid-stream (an error event was sent)."""

    cancel: Callable[[], None]
    frames: Iterator[bytes] = field(default_factory=lambda: iter(()))
    failed: bool = False


class OpenAIRoutes:
    """The four OpenAI endpoints (and GET /v1/models/{id}) over an Upstream."""

    def __init__(self, upstream: Upstream, model_id: str):
        self.upstream = upstream
        self.model_id = model_id

    def chat_completions(self, raw: bytes, ctx: CallContext) -> Reply | StreamReply:
        return self._generate(generation.parse_chat(parse_json_object(raw), self.model_id), ctx)

    def completions(self, raw: bytes, ctx: CallContext) -> Reply | StreamReply:
        return self._generate(generation.parse_text(parse_json_object(raw), self.model_id), ctx)

    def models(self, ctx: CallContext) -> Reply:
        info = _call(lambda: self.upstream.model_info(ctx))
        return Reply(200, responses.models_body(info, self.model_id))

    def model(self, model: str, ctx: CallContext) -> Reply:
        if model != self.model_id:
            raise model_not_found(model, self.model_id)
        info = _call(lambda: self.upstream.model_info(ctx))
        return Reply(200, responses.model_body(info, self.model_id))

    def feedback(self, raw: bytes, ctx: CallContext) -> Reply:
        request = fb.parse_feedback(parse_json_object(raw))
        reply = _call(lambda: self.upstream.submit_feedback(request, ctx), fb.FEEDBACK_PARAMS)
        return Reply(200, fb.receipt_body(request, reply))

    def _generate(self, call: generation.GenerationCall, ctx: CallContext) -> Reply | StreamReply:
        created = int(time.time())
        if not call.stream:
            reply = _call(lambda: self.upstream.generate(call.request, ctx), call.params)
            return Reply(200, responses.completion_body(call.kind, reply, self.model_id, created))
        stream = _call(lambda: self.upstream.generate_stream(call.request, ctx), call.params)
        first = _call(lambda: next(stream, None), call.params)
        renderer = responses.ChunkRenderer(call.kind, self.model_id, created, call.include_usage)
        reply = StreamReply(stream.cancel)
        reply.frames = _frames(stream, first, renderer, call.params, reply)
        return reply


def _call(fn: Callable[[], Any], params: ParamMap = ()) -> Any:
    """Run one upstream call; its UpstreamError becomes the OpenAI-format ApiError."""
    try:
        return fn()
    except UpstreamError as exc:
        raise from_upstream(exc, params) from None


def _frames(
    stream: UpstreamStream,
    first: policy_pb2.GenerateStreamResponse | None,
    renderer: responses.ChunkRenderer,
    params: ParamMap,
    reply: StreamReply,
) -> Iterator[bytes]:
    """Every chunk as an SSE frame, the usage chunk if asked, then ``data: [DONE]``."""
    try:
        if first is not None:
            yield responses.sse_event(renderer.chunk(first))
        for piece in stream:
            yield responses.sse_event(renderer.chunk(piece))
    except UpstreamError as exc:
        log.warning("policy stream failed", extra={"error": str(exc)})
        reply.failed = True
        yield responses.sse_event(from_upstream(exc, params).body())
        return
    if renderer.include_usage:
        yield responses.sse_event(renderer.usage_chunk())
    yield responses.SSE_DONE
