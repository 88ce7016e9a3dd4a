"""SIGTERM while streams are being generated: with a grace period long enough
they all finish (and their GenerationEvents are flushed to Kafka before the
process exits 0); with no grace period each one still ends with a clear
status, never a hang. New calls once the server drains are refused with UNAVAILABLE.

A real policy process on the test broker, tiny model.
"""

from __future__ import annotations

import signal
import threading

import grpc
import pytest

from shared.grpc.healthcheck import health_status
from shared.kafka import events
from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2, policy_pb2_grpc
from tests.faults.harness import channel, start_stack, write_report
from tests.helpers import read_topic, wait_until

pytestmark = pytest.mark.slow  # a policy process per case: about 20 s each

STREAMS = 6
FINISHED = (events_pb2.FINISH_REASON_LENGTH, events_pb2.FINISH_REASON_EOS)


def _stream(stub, user_id: str, outcome: dict) -> None:
    request = policy_pb2.GenerateRequest(
        prompt="User: how do I boil an egg?\nAssistant:",
        user_id=user_id,
        sampling=common_pb2.SamplingParams(max_new_tokens=100),
    )
    outcome["chunks"] = []
    try:
        for chunk in stub.GenerateStream(request, timeout=60):
            outcome["chunks"].append(chunk)
        outcome["code"] = "OK"
    except grpc.RpcError as exc:
        outcome["code"] = exc.code().name
        outcome["details"] = exc.details()


@pytest.mark.parametrize("grace_s", [30.0, 0.0])
def test_sigterm_during_streams_finishes_them_or_ends_them_clearly(grace_s, fault_store, broker, tmp_path, unique_name):
    stack = start_stack(
        tmp_path, broker.bootstrap, fault_store, ["policy"], group="unused",
        extra_args={"policy": ["--grace-period-s", str(grace_s)]},
    )  # fmt: skip
    policy = stack.processes["policy"]
    outcomes = [{} for _ in range(STREAMS)]
    with channel(policy.address) as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        readers = [
            threading.Thread(target=_stream, args=(stub, f"{unique_name}-{i}", o), daemon=True)
            for i, o in enumerate(outcomes)
        ]
        try:
            for reader in readers:
                reader.start()
            wait_until(lambda: all(o.get("chunks") or "code" in o for o in outcomes), 60, message="streams started")
            policy.proc.send_signal(signal.SIGTERM)
            for reader in readers:
                reader.join(timeout=90)
            assert not any(r.is_alive() for r in readers), "a stream hung after SIGTERM"
            # The streams may all end before the process even reads the signal (a tiny model, a busy
            # machine): wait for the draining state first. With no drain delay the server reports
            # NOT_SERVING only once it refuses new calls (its health call itself may be refused too).
            wait_until(lambda: health_status(policy.address) != "SERVING", 60, message="the server draining")
            with pytest.raises(grpc.RpcError) as refused:
                stub.Generate(policy_pb2.GenerateRequest(prompt="User: hi\nAssistant:"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert policy.proc.wait(timeout=120) == 0, policy.log_path.read_text()[-3000:]
        finally:
            stack.stop()
    finished = [o for o in outcomes if o["code"] == "OK"]
    assert all(o["chunks"][-1].finish_reason in FINISHED for o in finished)
    cut = [o for o in outcomes if o["code"] != "OK"]
    if grace_s >= 30:
        assert not cut, [(o["code"], o.get("details")) for o in cut]
    assert all(o["code"] == "UNAVAILABLE" for o in cut), [(o["code"], o.get("details")) for o in cut]
    # Every finished stream's GenerationEvent was sent before the process exited.
    generation_ids = {o["chunks"][-1].generation_id for o in finished}
    on_topic = {
        m.generation_id
        for _, m in read_topic(broker.bootstrap, events.GENERATIONS_TOPIC, events_pb2.GenerationEvent, timeout_s=10)
        if m.user_id.startswith(unique_name)
    }
    assert generation_ids <= on_topic
    write_report(
        f"sigterm_stream_grace_{int(grace_s)}",
        {"streams": STREAMS, "finished": len(finished), "ended": sorted({f"{o['code']}: {o['details']}" for o in cut})},
    )
