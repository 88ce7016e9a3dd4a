"""Auth, a broker that is down, and graceful shutdown, against real servers."""

from __future__ import annotations

import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from shared.kafka.broker import free_port
from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2, policy_pb2_grpc
from tests.helpers import wait_until

TOKEN = "s3cret-token"


def _request(max_new_tokens=6, n=1):
    return policy_pb2.GenerateRequest(
        prompt="User: hi\nAssistant:",
        sampling=common_pb2.SamplingParams(max_new_tokens=max_new_tokens, num_return_sequences=n),
    )


def _metric(port: int, prefix: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(prefix))


@pytest.fixture(scope="module")
def offline_policy(tiny_lm_dir):
    """Auth on, and --kafka points at a port nothing listens on."""
    config = PolicyConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        kafka=f"127.0.0.1:{free_port()}",
        model_dir=str(tiny_lm_dir),
        auth_token=TOKEN,
        event_buffer=2,
        log_format="text",
    )
    service = PolicyService(config)
    service.start()
    yield service
    service.publisher.close(timeout_s=0)
    service.stop(grace_s=1)


@pytest.fixture(scope="module")
def offline_channel(offline_policy):
    with grpc.insecure_channel(f"127.0.0.1:{offline_policy.port}") as ch:
        yield ch


@pytest.mark.parametrize(
    "metadata, detail",
    [
        ((), "missing bearer token"),
        ((("authorization", "Bearer wrong"),), "invalid bearer token"),
    ],
)
def test_missing_or_wrong_token_is_unauthenticated(offline_channel, metadata, detail):
    stub = policy_pb2_grpc.PolicyServiceStub(offline_channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(_request(), metadata=metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and detail in info.value.details()


def test_health_needs_no_token(offline_channel):
    health = health_pb2_grpc.HealthStub(offline_channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_broker_down_still_serves_and_buffers_then_counts_drops(offline_channel, offline_policy):
    stub = policy_pb2_grpc.PolicyServiceStub(offline_channel)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    dropped_before = _metric(
        offline_policy.metrics_port, 'rlhf_events_dropped_total{reason="buffer_full",topic="rlhf.generations.v1"}'
    )
    response = stub.Generate(_request(n=1), metadata=auth, timeout=30)
    assert response.completions[0].generation_id
    # The first event is now being retried (the publisher holds it while it
    # tries to connect). The buffer holds 2: three more sequences overflow it,
    # and the retried event finds it full when it comes back.
    response = stub.Generate(_request(n=3), metadata=auth, timeout=30)
    assert len(response.completions) == 3
    assert offline_policy.publisher.pending() <= 2

    def dropped():
        return (
            _metric(
                offline_policy.metrics_port,
                'rlhf_events_dropped_total{reason="buffer_full",topic="rlhf.generations.v1"}',
            )
            - dropped_before
        )

    wait_until(lambda: dropped() >= 2, timeout_s=20, message="two events dropped and counted")
    assert _metric(offline_policy.metrics_port, 'rlhf_events_buffered{topic="rlhf.generations.v1"}') <= 2


def test_shutdown_lets_an_in_flight_stream_finish(broker, tiny_lm_dir):
    config = PolicyConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        kafka=broker.bootstrap,
        model_dir=str(tiny_lm_dir),
        grace_period_s=10,
        drain_delay_s=0.5,
        log_format="text",
    )
    service = PolicyService(config)
    service.start()
    chunks: list = []
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        # Hold the engine's queue lock so the call is certainly still in flight
        # when shutdown starts (a tiny model would otherwise finish first).
        with service.engine._cond:
            reader = threading.Thread(
                target=lambda: chunks.extend(stub.GenerateStream(_request(max_new_tokens=40), timeout=60))
            )
            reader.start()
            wait_until(lambda: _in_flight() >= 1, message="the stream reached the server")
            stopper = threading.Thread(target=service.stop)
            stopper.start()
            wait_until(
                lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.NOT_SERVING,
                message="NOT_SERVING after stop",
            )
            stopper.join(timeout=1.0)  # past the drain delay: grpc is now stopping with a grace period
            assert stopper.is_alive()
        reader.join(timeout=30)
        stopper.join(timeout=30)
    assert chunks and chunks[-1].finish_reason in (events_pb2.FINISH_REASON_LENGTH, events_pb2.FINISH_REASON_EOS)
    assert chunks[-1].completion_tokens >= 1


def _in_flight() -> float:
    from shared.metrics import RPC_IN_FLIGHT

    return RPC_IN_FLIGHT.labels("policy")._value.get()
