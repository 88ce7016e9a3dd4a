"""The gRPC side of the front door: one channel to the policy, one to the
feedback gateway. Each call carries the client's bearer token, the request id
and the client id as metadata and a deadline; a failed call becomes an
UpstreamError (its status code's name, details and retry hint), which
api_errors.from_upstream turns into OpenAI's error format."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from services.openai_api.api_errors import UpstreamError
from services.openai_api.routes import CallContext
from shared.grpc.calls import REQUEST_ID_HEADER, RETRY_AFTER_HEADER
from shared.grpc.channels import ClientTLS, open_channel
from shared.proto.rlhf.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc, policy_pb2, policy_pb2_grpc

CLIENT_ID_HEADER = "x-client-id"  # what services/feedback rate-limits by
# Replies are bounded by the services' own --max-message-bytes; this only keeps a
# large n * max_tokens answer from hitting grpc's 4 MiB default first.
_MAX_RECEIVE_BYTES = 64 * 1024 * 1024


def _metadata(ctx: CallContext) -> tuple[tuple[str, str], ...]:
    pairs = [(REQUEST_ID_HEADER, ctx.request_id)]
    if ctx.authorization:
        pairs.append(("authorization", ctx.authorization))
    if ctx.client_id:
        pairs.append((CLIENT_ID_HEADER, ctx.client_id))
    return tuple(pairs)


def _upstream_error(exc: grpc.RpcError, service: str) -> UpstreamError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    retry_after = None
    if isinstance(exc, grpc.Call):
        trailers = dict(exc.trailing_metadata() or ())
        if RETRY_AFTER_HEADER in trailers:
            try:
                retry_after = float(trailers[RETRY_AFTER_HEADER])
            except ValueError:
                retry_after = None
    return UpstreamError(code.name if code else "UNKNOWN", details or "", retry_after, service)


class PolicyStream:
    """A GenerateStream call: iterate its messages; ``cancel`` ends it (the policy stops decoding)."""

    def __init__(self, call: grpc.Call):
        self._call = call
        self._messages: Iterator[policy_pb2.GenerateStreamResponse] = iter(call)

    def __iter__(self) -> PolicyStream:
        return self

    def __next__(self) -> policy_pb2.GenerateStreamResponse:
        try:
            return next(self._messages)
        except grpc.RpcError as exc:
            raise _upstream_error(exc, "policy") from None

    def cancel(self) -> None:
        self._call.cancel()


class GrpcUpstream:
    """The Upstream routes.py needs, over gRPC."""

    def __init__(self, policy_addr: str, feedback_addr: str, timeout_s: float, tls: ClientTLS | None = None):
        # round_robin: an address that resolves to several replicas (a headless Kubernetes
        # Service) spreads calls over all of them instead of pinning one connection.
        options = [("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES), ("grpc.lb_policy_name", "round_robin")]
        self.timeout_s = timeout_s
        self._policy_channel = open_channel(policy_addr, tls, options)
        self._feedback_channel = open_channel(feedback_addr, tls, options)
        self.policy = policy_pb2_grpc.PolicyServiceStub(self._policy_channel)
        self.feedback = feedback_pb2_grpc.FeedbackServiceStub(self._feedback_channel)

    def generate(self, request: policy_pb2.GenerateRequest, ctx: CallContext) -> policy_pb2.GenerateResponse:
        try:
            return self.policy.Generate(request, timeout=self.timeout_s, metadata=_metadata(ctx))
        except grpc.RpcError as exc:
            raise _upstream_error(exc, "policy") from None

    def generate_stream(self, request: policy_pb2.GenerateRequest, ctx: CallContext) -> PolicyStream:
        return PolicyStream(self.policy.GenerateStream(request, timeout=self.timeout_s, metadata=_metadata(ctx)))

    def model_info(self, ctx: CallContext) -> common_pb2.ModelInfo:
        try:
            return self.policy.GetModelInfo(
                common_pb2.GetModelInfoRequest(), timeout=self.timeout_s, metadata=_metadata(ctx)
            )
        except grpc.RpcError as exc:
            raise _upstream_error(exc, "policy") from None

    def submit_feedback(
        self, request: feedback_pb2.SubmitFeedbackRequest, ctx: CallContext
    ) -> feedback_pb2.SubmitFeedbackResponse:
        try:
            return self.feedback.SubmitFeedback(request, timeout=self.timeout_s, metadata=_metadata(ctx))
        except grpc.RpcError as exc:
            raise _upstream_error(exc, "feedback") from None

    def close(self) -> None:
        """Close both channels; calls still in flight end with CANCELLED."""
        self._policy_channel.close()
        self._feedback_channel.close()
