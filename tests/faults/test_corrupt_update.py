"""A corrupted model version announced by a ModelUpdateEvent: every replica
(two policy replicas, one reward replica) refuses it, keeps serving the
version it has, and counts it in rlhf_model_swaps_total{result="failed"};
a good version announced afterwards is swapped in as usual.

Two corruptions of each kind, both made CURRENT before the announcement (as
a promotion would): a file whose sha256 no longer matches the manifest (a
disk or copy error), and a truncated model.safetensors whose manifest matches
it (a writer that recorded a short file).

Real processes on the test broker: policy x2 and reward, tiny models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rlhf_cli.stack import ServiceProcess, health_status
from shared.kafka import events
from shared.kafka.broker import free_port
from shared.kafka.producer import create_producer, produce_event
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import (
    common_pb2,
    events_pb2,
    policy_pb2,
    policy_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
)
from tests.faults.harness import channel, metric, start_stack, write_report
from tests.helpers import wait_until

pytestmark = pytest.mark.slow  # three replicas and five announcements: about a minute

KINDS = {"policy": common_pb2.MODEL_KIND_POLICY, "reward": common_pb2.MODEL_KIND_REWARD}


def copy_version(store: ModelStore, kind: str, version: str, corrupt=None):
    """A fill function: the files of ``version`` (not its manifest), then ``corrupt(dir)``."""

    def fill(out: Path) -> None:
        shutil.copytree(
            store.open_version(kind, version), out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json")
        )
        if corrupt is not None:
            corrupt(out)

    return fill


def truncate(out: Path) -> None:
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def flip_a_byte(vdir: Path) -> None:
    weights = vdir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


def serving(kind: str, replica: ServiceProcess) -> str:
    """The version ``replica`` answers with now."""
    with channel(replica.address) as ch:
        if kind == "policy":
            request = policy_pb2.GenerateRequest(
                prompt="User: hi\nAssistant:", sampling=common_pb2.SamplingParams(max_new_tokens=4)
            )
            return policy_pb2_grpc.PolicyServiceStub(ch).Generate(request, timeout=30).model_version
        item = reward_pb2.ScoreRequest(prompt="User: hi\nAssistant:", response="Hello there.")
        reply = reward_pb2_grpc.RewardServiceStub(ch).ScoreBatch(reward_pb2.ScoreBatchRequest(items=[item]), timeout=30)
        return reply.model_version


def swaps(kind: str, replica: ServiceProcess, result: str) -> float:
    return metric(replica.metrics_port, "rlhf_model_swaps_total", kind=kind, result=result)


def wait_quietly(predicate, timeout_s: float) -> bool:
    try:
        wait_until(predicate, timeout_s, 0.2)
        return True
    except AssertionError:
        return False


def announce_until(store: ModelStore, producer, kind: str, version: str, done) -> None:
    """Publish the update, again every few seconds until ``done()`` (a replica
    only sees updates published after its consumer is positioned)."""

    def publish_and_check() -> bool:
        update = events_pb2.ModelUpdateEvent(
            event_id=events.new_id(),
            kind=KINDS[kind],
            version=version,
            action=events_pb2.MODEL_UPDATE_ACTION_PROMOTE,
            created_at=events.now_timestamp(),
            reason="fault injection",
            manifest_sha256=store.manifest_sha256(kind, version),
        )
        produce_event(producer, events.MODEL_UPDATES_TOPIC, kind, update).get(timeout=10)
        return wait_quietly(done, 5)

    wait_until(publish_and_check, 120, 0, f"{kind} {version} handled by every replica")


def corrupt_then_repair(store: ModelStore, producer, kind: str, replicas: list[ServiceProcess]) -> dict:
    """Two corrupted versions, each made CURRENT and announced, then a good one."""
    bad_sha = store.write_version(kind, copy_version(store, kind, "v1"), parent_version="v1").version
    flip_a_byte(store.root / kind / bad_sha)
    truncated = store.write_version(kind, copy_version(store, kind, "v1", truncate), parent_version="v1").version
    store.open_version(kind, truncated)  # its manifest matches: only loading it can tell
    for bad in (bad_sha, truncated):
        before = [swaps(kind, r, "failed") for r in replicas]
        store.set_current(kind, bad)
        announce_until(
            store, producer, kind, bad, lambda b=before: all(swaps(kind, r, "failed") > n for r, n in zip(replicas, b))
        )
        assert [serving(kind, r) for r in replicas] == ["v1"] * len(replicas), f"{kind} replicas keep serving v1"
        assert all(swaps(kind, r, "ok") == 0 for r in replicas)
    good = store.write_version(kind, copy_version(store, kind, "v1"), parent_version="v1").version
    store.set_current(kind, good)
    announce_until(store, producer, kind, good, lambda: all(swaps(kind, r, "ok") >= 1 for r in replicas))
    assert [serving(kind, r) for r in replicas] == [good] * len(replicas)
    return {
        "replicas": len(replicas),
        "corrupt_versions_refused": [bad_sha, truncated],
        "failed_swaps_counted": [swaps(kind, r, "failed") for r in replicas],
        "good_version_served_after": good,
    }


def test_corrupted_versions_are_refused_by_every_replica_which_keeps_serving(fault_store, broker, tmp_path):
    store = ModelStore(fault_store)
    stack = start_stack(tmp_path, broker.bootstrap, fault_store, ["reward", "policy"], group="unused")
    base_env, args = stack.processes["policy"].launch
    second = ServiceProcess("policy", free_port(), free_port(), tmp_path / "logs" / "policy-2.log")
    second.start(base_env, args)  # started like the first replica, on its own ports
    producer = create_producer(broker.bootstrap)
    replicas = {"policy": [stack.processes["policy"], second], "reward": [stack.processes["reward"]]}
    try:
        wait_until(lambda: health_status(second.address) == "SERVING" or not second.running(), 240, 0.3)
        assert second.running(), second.log_path.read_text()[-3000:]

        figures = {kind: corrupt_then_repair(store, producer, kind, found) for kind, found in replicas.items()}
        write_report("corrupt_update", figures)
    finally:
        producer.close()
        second.stop(30)
        stack.stop()
