"""FeedbackService over gRPC, and the gateway process's lifecycle.

RPC methods only translate: the client id from metadata, the core
(gateway.FeedbackGateway) does the rest, the receipt becomes the reply.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Sequence

import grpc

from services.feedback.config import FeedbackConfig
from services.feedback.dedup import FirstAnswerCache
from services.feedback.gateway import FeedbackGateway, FeedbackReceipt
from services.feedback.rate_limit import ClientRateLimiter
from shared.grpc.aio_server import AioGrpcServer
from shared.grpc.auth import current_principal
from shared.grpc.lifecycle import ServerLifecycle, ServiceBinding
from shared.grpc.server import GrpcServer
from shared.kafka.producer import create_producer
from shared.proto.rlhf.v1 import feedback_pb2, feedback_pb2_grpc
from shared.service_main import run_service

log = logging.getLogger(__name__)

SERVICE_NAME = "feedback"
CLIENT_ID_HEADER = "x-client-id"


def client_id(context: grpc.ServicerContext) -> str:
    """Who the rate limit charges: the subject of the caller's token, else the
    x-client-id an app sends for its end user (behind auth, so trusted), else
    the bearer token (by a hash: tokens are never kept), else the peer host."""
    subject = caller_subject()
    if subject:
        return "sub:" + subject
    metadata = dict(context.invocation_metadata() or ())
    given = metadata.get(CLIENT_ID_HEADER, "")
    if given:
        return "id:" + given[:128]
    token = metadata.get("authorization", "")
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    peer = context.peer() or "unknown"  # "ipv4:127.0.0.1:53211": the port changes per connection
    return "peer:" + peer.rsplit(":", 1)[0]


def caller_subject() -> str:
    """The user or app the caller's token speaks for; empty without one (auth off, or a token with no subject)."""
    principal = current_principal()
    return principal.subject if principal is not None else ""


def _reply(receipt: FeedbackReceipt) -> feedback_pb2.SubmitFeedbackResponse:
    reply = feedback_pb2.SubmitFeedbackResponse(
        feedback_id=receipt.feedback_id, duplicate=receipt.duplicate, partition=receipt.partition, offset=receipt.offset
    )
    reply.accepted_at.FromNanoseconds(receipt.accepted_at_ns)
    return reply


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, gateway: FeedbackGateway):
        self.gateway = gateway

    def SubmitFeedback(self, request, context):
        return _reply(self.gateway.submit(request.feedback, client_id(context), caller_subject()))

    def SubmitFeedbackBatch(self, request, context):
        receipts = self.gateway.submit_batch(request.feedback, client_id(context), caller_subject())
        return feedback_pb2.SubmitFeedbackBatchResponse(results=[_reply(r) for r in receipts])


class AsyncFeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    """FeedbackServicer for the grpc.aio server: the same answers, awaiting the broker's acks."""

    def __init__(self, gateway: FeedbackGateway):
        self.gateway = gateway

    async def SubmitFeedback(self, request, context):
        return _reply(await self.gateway.submit_async(request.feedback, client_id(context), caller_subject()))

    async def SubmitFeedbackBatch(self, request, context):
        receipts = await self.gateway.submit_batch_async(request.feedback, client_id(context), caller_subject())
        return feedback_pb2.SubmitFeedbackBatchResponse(results=[_reply(r) for r in receipts])


class FeedbackGatewayServer:
    """The gateway: a Kafka producer, the core, and the gRPC server around it."""

    def __init__(self, config: FeedbackConfig):
        self.config = config

        # Every caller waits for its own ack, so linger adds to each call's latency; records
        # still batch while earlier requests are in flight (--linger-ms trades latency for CPU).
        def new_producer():
            return create_producer(
                config.kafka,
                client_id="rlhf-feedback-gateway",
                linger_ms=config.linger_ms,
                **config.kafka_client_options(),
            )

        self.gateway = FeedbackGateway(
            new_producer(),
            config.limits,
            FirstAnswerCache(config.dedup_ttl_s, config.dedup_capacity),
            ClientRateLimiter(config.rate_limit, config.rate_burst),
            ack_timeout_s=config.ack_timeout_s,
            new_producer=new_producer,
        )
        servicer = AsyncFeedbackServicer(self.gateway) if config.server == "aio" else FeedbackServicer(self.gateway)
        binding = ServiceBinding(
            feedback_pb2_grpc.add_FeedbackServiceServicer_to_server,
            servicer,
            feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name,
        )
        server_cls = AioGrpcServer if config.server == "aio" else GrpcServer
        self.grpc: ServerLifecycle = server_cls(config, SERVICE_NAME, [binding])

    def start(self) -> int:
        port = self.grpc.start()
        self.grpc.set_serving(True)  # the producer reached the broker in __init__
        return port

    def stop(self, grace_s: float | None = None) -> None:
        self.grpc.stop(grace_s)
        # In-flight calls have finished; anything still buffered gets its ack wait.
        self.producer.flush(timeout=self.config.ack_timeout_s)
        self.producer.close(timeout=self.config.ack_timeout_s)

    @property
    def producer(self):
        """The gateway's producer now (it is replaced after a fatal error)."""
        return self.gateway.producer


def _build(config: FeedbackConfig) -> FeedbackGatewayServer:
    # Each call hands off between a gRPC thread and the producer's I/O thread
    # twice; the default 5 ms GIL switch interval would dominate its latency.
    sys.setswitchinterval(0.0005)
    return FeedbackGatewayServer(config)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(FeedbackConfig, SERVICE_NAME, _build, argv)
