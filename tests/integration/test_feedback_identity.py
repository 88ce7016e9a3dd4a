"""The feedback gateway binds feedback to its caller's identity: a real gateway
over TLS on port 0, a tokens file with subjects, the real broker."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.feedback.config import FeedbackConfig
from services.feedback.server import FeedbackGatewayServer
from shared.grpc.channels import open_channel
from shared.grpc.tls import ClientTLS
from shared.kafka import events
from shared.kafka.events import new_id
from shared.proto.rlhf.v1 import events_pb2 as ev
from shared.proto.rlhf.v1 import feedback_pb2, feedback_pb2_grpc
from tests.helpers import read_topic
from tests.tls_certs import make_pki

USER_TOKEN = "token-of-user-u7-0123456789"  # a token that speaks for one user
BACKEND_TOKEN = "token-of-a-backend-9876543210"  # an app's backend relaying for its users


@pytest.fixture(scope="module")
def gateway(broker, tmp_path_factory):
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                hashlib.sha256(USER_TOKEN.encode()).hexdigest(): {"role": "application", "subject": "u7"},
                hashlib.sha256(BACKEND_TOKEN.encode()).hexdigest(): {"role": "application"},
            }
        )
    )
    config = FeedbackConfig(
        port=0,
        metrics_port=-1,
        kafka=broker.bootstrap,
        grace_period_s=1,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tokens_file=str(tokens),
    )
    server = FeedbackGatewayServer(config)
    port = server.start()
    channel = open_channel(f"127.0.0.1:{port}", ClientTLS(ca_file=str(pki.ca)))
    yield feedback_pb2_grpc.FeedbackServiceStub(channel), channel
    channel.close()
    server.stop(1)


def as_(token: str):
    return (("authorization", f"Bearer {token}"),)


def rating(user_id: str = "") -> ev.FeedbackEvent:
    return ev.FeedbackEvent(feedback_id=new_id(), generation_id=new_id(), user_id=user_id, rating=ev.Rating(score=1))


def users_on_topic(broker, feedback_ids) -> dict[str, str]:
    records = read_topic(broker.bootstrap, events.FEEDBACK_TOPIC, ev.FeedbackEvent)
    return {m.feedback_id: m.user_id for _, m in records if m.feedback_id in set(feedback_ids)}


def test_a_subject_token_stamps_its_user_and_refuses_another(broker, gateway):
    stub, _ = gateway
    stamped, own, other = rating(), rating("u7"), rating("u8")
    stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=stamped), metadata=as_(USER_TOKEN))
    stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=own), metadata=as_(USER_TOKEN))
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=other), metadata=as_(USER_TOKEN))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details().startswith("feedback.user_id: is 'u8' but the caller's token speaks for 'u7'")
    ids = [stamped.feedback_id, own.feedback_id, other.feedback_id]
    assert users_on_topic(broker, ids) == {stamped.feedback_id: "u7", own.feedback_id: "u7"}


def test_a_batch_claiming_another_user_is_refused_whole(broker, gateway):
    stub, _ = gateway
    batch = [rating(), rating("u9"), rating("u7")]
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitFeedbackBatch(feedback_pb2.SubmitFeedbackBatchRequest(feedback=batch), metadata=as_(USER_TOKEN))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details().startswith("feedback[1].user_id: is 'u9'")
    assert users_on_topic(broker, [e.feedback_id for e in batch]) == {}


def test_a_token_without_a_subject_relays_its_users_ids(broker, gateway):
    stub, channel = gateway
    batch = [rating("end-user-1"), rating("end-user-2"), rating()]
    stub.SubmitFeedbackBatch(feedback_pb2.SubmitFeedbackBatchRequest(feedback=batch), metadata=as_(BACKEND_TOKEN))
    assert users_on_topic(broker, [e.feedback_id for e in batch]) == {
        batch[0].feedback_id: "end-user-1",
        batch[1].feedback_id: "end-user-2",
        batch[2].feedback_id: "",
    }
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, "probes work over TLS without a token"
