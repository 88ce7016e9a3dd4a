"""shared.grpc.server: a real server on a free port, with a small servicer of
the RewardService contract written here to exercise the plumbing."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from shared import errors
from shared.grpc.server import REQUEST_ID_HEADER, RETRY_AFTER_HEADER, GrpcServer, ServiceBinding
from shared.logs import request_id_var
from shared.metrics import start_metrics_server
from shared.proto.rlhf.v1 import reward_pb2, reward_pb2_grpc
from shared.service_config import ServiceConfig
from tests.helpers import wait_until

SERVICE = "rlhf.v1.RewardService"


class EchoRewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Scores by prompt length; special prompts trigger each failure path."""

    def __init__(self):
        self.release = threading.Event()

    def Score(self, request, context):
        if not request.prompt:
            raise errors.InvalidArgument("prompt", "must not be empty")
        if request.prompt == "busy":
            raise errors.ResourceExhausted("queue full", retry_after_s=2.5)
        if request.prompt == "bug":
            raise RuntimeError("a bug")
        if request.prompt == "slow":
            self.release.wait(10)
        return reward_pb2.ScoreResponse(score=len(request.prompt), model_version=request_id_var.get())


def start(**overrides) -> tuple[GrpcServer, grpc.Channel, EchoRewardServicer]:
    servicer = EchoRewardServicer()
    config = ServiceConfig(port=0, host="127.0.0.1", grace_period_s=5, **overrides)
    server = GrpcServer(
        config, "test", [ServiceBinding(reward_pb2_grpc.add_RewardServiceServicer_to_server, servicer, SERVICE)]
    )
    port = server.start()
    server.set_serving(True)
    return server, grpc.insecure_channel(f"127.0.0.1:{port}"), servicer


@pytest.fixture()
def served():
    server, channel, servicer = start()
    yield server, channel, servicer
    servicer.release.set()
    channel.close()
    server.stop(0)


def test_health_follows_readiness(served):
    server, channel, _ = served
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status == health_pb2.HealthCheckResponse.SERVING
    server.set_serving(False)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_service_errors_map_to_status_codes(served):
    _, channel, _ = served
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(reward_pb2.ScoreRequest(prompt=""))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "prompt: must not be empty"

    with pytest.raises(grpc.RpcError) as err:
        stub.Score(reward_pb2.ScoreRequest(prompt="busy"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(err.value.trailing_metadata())[RETRY_AFTER_HEADER] == "2.500"

    with pytest.raises(grpc.RpcError) as err:
        stub.Score(reward_pb2.ScoreRequest(prompt="bug"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "request id" in err.value.details() and "a bug" not in err.value.details()


def test_request_id_is_propagated(served):
    _, channel, _ = served
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    reply, call = stub.Score.with_call(reward_pb2.ScoreRequest(prompt="hi"), metadata=[(REQUEST_ID_HEADER, "abc123")])
    assert reply.model_version == "abc123", "the servicer saw the caller's request id"
    assert dict(call.initial_metadata())[REQUEST_ID_HEADER] == "abc123"
    reply, call = stub.Score.with_call(reward_pb2.ScoreRequest(prompt="hi"))
    assert len(dict(call.initial_metadata())[REQUEST_ID_HEADER]) == 32


def test_oversized_request_is_invalid_argument_with_the_limit():
    server, channel, _ = start(max_message_bytes=2048)
    try:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(reward_pb2.ScoreRequest(prompt="x" * 5000))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit is 2048 bytes" in err.value.details()
    finally:
        channel.close()
        server.stop(0)


def test_bearer_token_auth_spares_health_and_reflection():
    server, channel, _ = start(auth_token="t0ken")
    try:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(reward_pb2.ScoreRequest(prompt="hi"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(reward_pb2.ScoreRequest(prompt="hi"), metadata=[("authorization", "Bearer wrong")])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Score(reward_pb2.ScoreRequest(prompt="hi"), metadata=[("authorization", "Bearer t0ken")]).score == 2
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        db = ProtoReflectionDescriptorDatabase(channel)
        assert SERVICE in db.get_services()
    finally:
        channel.close()
        server.stop(0)


def test_reflection_describes_the_service(served):
    _, channel, _ = served
    db = ProtoReflectionDescriptorDatabase(channel)
    assert {SERVICE, "grpc.health.v1.Health"} <= set(db.get_services())
    method_names = [m.name for m in db.FindFileContainingSymbol(SERVICE).service[0].method]
    assert "ScoreBatch" in method_names


def test_graceful_stop_finishes_in_flight_calls_and_refuses_new_ones():
    server, channel, servicer = start()
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    in_flight = stub.Score.future(reward_pb2.ScoreRequest(prompt="slow"))
    time.sleep(0.3)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.3)
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError):
        stub.Score(reward_pb2.ScoreRequest(prompt="new"), timeout=2)
    servicer.release.set()
    assert in_flight.result(timeout=10).score == 4, "the in-flight call completed"
    stopper.join(10)
    del health
    channel.close()


def test_metrics_endpoint_counts_calls(served):
    _, channel, _ = served
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    stub.Score(reward_pb2.ScoreRequest(prompt="hi"))
    with pytest.raises(grpc.RpcError):
        stub.Score(reward_pb2.ScoreRequest(prompt=""))
    port = start_metrics_server(0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'rlhf_rpc_requests_total{code="OK",method="Score",service="test"}' in body
    assert 'rlhf_rpc_requests_total{code="INVALID_ARGUMENT",method="Score",service="test"}' in body
    assert "rlhf_rpc_latency_seconds_bucket" in body


def test_container_healthcheck_exits_zero_only_while_serving(served, capsys):
    from shared.grpc.healthcheck import main as healthcheck

    server, _, _ = served
    address = f"127.0.0.1:{server.port}"
    assert healthcheck([address]) == 0
    server.set_serving(False)
    assert healthcheck([address]) == 1
    assert "NOT_SERVING" in capsys.readouterr().out
    server.stop(0)
    assert healthcheck([address]) == 1


def test_connections_are_closed_at_max_age_and_clients_reconnect():
    """What lets a replica added behind a headless Service get traffic: the server sends
    GOAWAY at the age, the client's channel goes idle and its next call reconnects."""
    server, channel, _ = start(max_connection_age_s=0.5)
    states: list[grpc.ChannelConnectivity] = []
    try:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        assert stub.Score(reward_pb2.ScoreRequest(prompt="abc", response="x"), timeout=5).score == 3
        channel.subscribe(states.append)
        wait_until(
            lambda: grpc.ChannelConnectivity.IDLE in states, timeout_s=30, message="the server closes the connection"
        )
        assert stub.Score(reward_pb2.ScoreRequest(prompt="abcd", response="x"), timeout=5).score == 4
    finally:
        channel.close()
        server.stop(0)
