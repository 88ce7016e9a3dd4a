"""Hot swap: ModelUpdateEvents on the real broker move a serving policy
through store versions while clients keep generating, with no errors."""

from __future__ import annotations

import shutil
import threading

import grpc

from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from shared.kafka import events
from shared.kafka.producer import create_producer, produce_event
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2, policy_pb2_grpc
from tests.helpers import wait_until

CLIENTS = 8


def _store_with_versions(root, tiny_lm_dir, count: int) -> ModelStore:
    """``count`` policy versions with different weights (re-seeded GPT-2s)."""
    from transformers import AutoTokenizer

    from demo.tiny_lm import new_gpt2, save_causal_lm

    store = ModelStore(root)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir, local_files_only=True)
    for seed in range(count):

        def fill(out, seed=seed):
            if seed == 0:
                shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True)
            else:
                model = new_gpt2(tokenizer, n_layer=2, n_head=2, n_embd=64, n_positions=128, seed=seed)
                save_causal_lm(model, tokenizer, out)

        store.write_version("policy", fill, parent_version=store.latest("policy") or "")
    store.set_current("policy", "v1")
    return store


def test_eight_clients_keep_generating_across_three_swaps(broker, tiny_lm_dir, tmp_path):
    store = _store_with_versions(tmp_path / "store", tiny_lm_dir, 4)
    store.set_current("policy", "v1")
    config = PolicyConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        kafka=broker.bootstrap,
        model_store=str(store.root),
        log_format="text",
    )
    service = PolicyService(config)
    service.start()
    assert service.engine.bundle.version == "v1"
    wait_until(service.updates.ready.is_set, timeout_s=15, message="model-update consumer assigned")
    stop = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            while not stop.is_set():
                request = policy_pb2.GenerateRequest(
                    prompt=f"User: question {i}\\nAssistant:",
                    sampling=common_pb2.SamplingParams(max_new_tokens=8, seed=i),
                )
                try:
                    seen.append(stub.Generate(request, timeout=30).model_version)
                except grpc.RpcError as exc:  # counted, asserted empty below
                    errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    producer = create_producer(broker.bootstrap)
    failed_before = _swaps("failed")
    try:
        # An update whose manifest does not match the store is refused; serving goes on.
        store.set_current("policy", "v2")
        tampered = events_pb2.ModelUpdateEvent(
            event_id=events.new_id(),
            kind=common_pb2.MODEL_KIND_POLICY,
            version="v2",
            previous_version="v1",
            manifest_sha256="0" * 64,
        )
        produce_event(producer, events.MODEL_UPDATES_TOPIC, "policy", tampered).get(timeout=10)
        wait_until(lambda: _swaps("failed") > failed_before, timeout_s=20, message="the bad update refused")
        assert service.engine.bundle.version == "v1"
        for previous, version in [("v1", "v2"), ("v2", "v3"), ("v3", "v4")]:
            served_before = len(seen)
            store.set_current("policy", version)  # as the Promoter does: CURRENT first, then the event
            produce_event(producer, events.MODEL_UPDATES_TOPIC, "policy", _update(store, version, previous)).get(10)
            wait_until(lambda v=version: service.engine.bundle.version == v, timeout_s=20, message=f"swap to {version}")
            wait_until(lambda v=version: seen.count(v) >= CLIENTS, timeout_s=20, message=f"responses from {version}")
            assert len(seen) > served_before
        # A stale event delivered late (e.g. by a producer abandoned in a broker
        # outage) names v2 while CURRENT is v4: the replica stays on CURRENT.
        stale_before = len(seen)
        produce_event(producer, events.MODEL_UPDATES_TOPIC, "policy", _update(store, "v2", "v1")).get(10)
        wait_until(
            lambda: len(seen) > stale_before + 4 * CLIENTS, timeout_s=30, message="serving after the stale event"
        )
        assert service.engine.bundle.version == "v4" and seen[-1] == "v4"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        producer.close()
        service.stop(grace_s=5)
    assert errors == []
    assert set(seen) <= {"v1", "v2", "v3", "v4"}
    assert {"v1", "v4"} <= set(seen)


def _update(store: ModelStore, version: str, previous: str) -> events_pb2.ModelUpdateEvent:
    return events_pb2.ModelUpdateEvent(
        event_id=events.new_id(),
        kind=common_pb2.MODEL_KIND_POLICY,
        version=version,
        previous_version=previous,
        action=events_pb2.MODEL_UPDATE_ACTION_PROMOTE,
        created_at=events.now_timestamp(),
        manifest_sha256=store.manifest_sha256("policy", version),
    )


def _swaps(result: str) -> float:
    from shared.metrics import MODEL_SWAPS

    return MODEL_SWAPS.labels("policy", result)._value.get()
