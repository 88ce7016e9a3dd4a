"""Several policy replicas behind gRPC's client-side round_robin: `rlhf up
--policy-replicas 2`'s Stack starts two real policy processes; clients load
both; one is killed with SIGKILL mid-load and the calls move to the other.
Only calls in flight at the kill may fail, and only with UNAVAILABLE."""

from __future__ import annotations

import re
import shutil
import threading
import time
import urllib.request
from dataclasses import dataclass

import grpc
import pytest

from rlhf_cli.stack import Stack
from shared.grpc.channels import open_channel
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, policy_pb2, policy_pb2_grpc
from tests.helpers import free_port_offset, wait_until

CLIENTS = 4


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    code: grpc.StatusCode


def generate_calls_served(metrics_port: int) -> float:
    """rlhf_rpc_requests_total for Generate, as the replica's /metrics reports it."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    pattern = r'^rlhf_rpc_requests_total\{[^}]*method="Generate"[^}]*\} ([0-9.e+]+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))


@pytest.mark.slow  # two policy processes start (torch + transformers each): ~30-60 s on 2 cores
def test_calls_move_to_the_surviving_replica_when_one_is_killed(broker, tiny_lm_dir, tmp_path, monkeypatch):
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", lambda out: shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True))
    monkeypatch.setenv("RLHF_POLICY_TORCH_THREADS", "1")
    stack = Stack(
        model_store=store.root,
        log_dir=tmp_path / "logs",
        services=["policy"],
        kafka=broker.bootstrap,
        port_offset=free_port_offset(policy_replicas=2),
        policy_replicas=2,
        service_args={"policy": ["--default-max-new-tokens", "4"]},
    )
    calls: list[Call] = []
    stop = threading.Event()
    try:
        stack.start_services(ready_timeout_s=240)
        first, second = stack.policy_processes()
        address = stack.address("policy")
        assert address == f"{first.address},{second.address}"
        channel = open_channel(address)
        stub = policy_pb2_grpc.PolicyServiceStub(channel)

        def client(i: int) -> None:
            request = policy_pb2.GenerateRequest(
                prompt=f"User: question {i}\nAssistant:", sampling=common_pb2.SamplingParams(max_new_tokens=4)
            )
            while not stop.is_set():
                started = time.monotonic()
                try:
                    stub.Generate(request, timeout=60)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                calls.append(Call(started, time.monotonic(), code))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        wait_until(
            lambda: min(generate_calls_served(p.metrics_port) for p in (first, second)) >= 10,
            timeout_s=120,
            interval_s=0.5,
            message="round_robin sends calls to both replicas",
        )
        kill_started = time.monotonic()
        second.proc.kill()  # SIGKILL: no drain, no goodbye
        second.proc.wait()
        kill_done = time.monotonic()
        wait_until(
            lambda: sum(c.code == grpc.StatusCode.OK and c.started > kill_done for c in calls) >= 40,
            timeout_s=120,
            message="calls served after the kill",
        )
        served_by_survivor = generate_calls_served(first.metrics_port)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        channel.close()
    finally:
        stop.set()
        stack.stop(timeout_s=20)
    failed = [c for c in calls if c.code != grpc.StatusCode.OK]
    in_flight_at_kill = [c for c in failed if c.started <= kill_done and c.ended >= kill_started]
    assert failed == in_flight_at_kill, "a call that started after the kill failed"
    assert all(c.code == grpc.StatusCode.UNAVAILABLE for c in failed), {c.code for c in failed}
    assert len(failed) <= CLIENTS, "at most the calls in flight (one per client)"
    after_kill = [c for c in calls if c.started > kill_done]
    assert after_kill and all(c.code == grpc.StatusCode.OK for c in after_kill)
    assert served_by_survivor >= 40, "the survivor served what the killed replica would have"
