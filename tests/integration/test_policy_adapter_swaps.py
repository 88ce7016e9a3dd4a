"""A real policy service hot-swaps full weights -> LoRA adapter -> adapter -> full
weights on ModelUpdateEvents while clients keep generating: every response is the
greedy output (computed here with transformers/PEFT) of the version it names,
nothing fails, the base is read once for both adapters, and the adapter swapped
out is unloaded."""

from __future__ import annotations

import threading

import grpc

from services.policy import metrics as pm
from services.policy.config import PolicyConfig
from services.policy.server import PolicyService
from shared.kafka import events
from shared.kafka.producer import create_producer, produce_event
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2, policy_pb2_grpc
from tests.helpers import wait_until
from tests.lora_versions import reference_greedy, store_with_base, write_adapter_version, write_full_version

CLIENTS = 6
PROMPT = "User: how do I water a plant?\nAssistant:"
MAX_NEW = 12


def test_full_adapter_adapter_full_swaps_under_load(broker, tiny_lm_dir, tmp_path):
    store = store_with_base(tmp_path / "store", tiny_lm_dir)  # v1: full weights
    write_adapter_version(store, seed=11)  # v2: adapter on v1
    write_adapter_version(store, seed=12)  # v3: adapter on v1
    write_full_version(store, tiny_lm_dir, seed=13)  # v4: other full weights
    expected = {v: reference_greedy(store, v, PROMPT, MAX_NEW) for v in ("v1", "v2", "v3", "v4")}
    assert len(set(expected.values())) == 4
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
    wait_until(service.updates.ready.is_set, timeout_s=15, message="model-update consumer assigned")
    base = service.engine.bundle
    assert base.version == "v1" and base.adapter == ""
    stop = threading.Event()
    seen: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            sampling = common_pb2.SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)
            while not stop.is_set():
                try:
                    if i % 2:  # streamed: these are in flight across the swaps too
                        chunks = list(stub.GenerateStream(policy_pb2.GenerateRequest(prompt=PROMPT, sampling=sampling)))
                        seen.append((chunks[-1].model_version, "".join(c.text_delta for c in chunks)))
                    else:
                        reply = stub.Generate(policy_pb2.GenerateRequest(prompt=PROMPT, sampling=sampling), timeout=30)
                        seen.append((reply.model_version, reply.completions[0].text))
                except grpc.RpcError as exc:  # counted, asserted empty below
                    errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    producer = create_producer(broker.bootstrap)
    base_loads = pm.BASE_LOADS._value.get()
    try:
        wait_until(lambda: len(seen) >= CLIENTS, timeout_s=30, message="responses from v1")
        for previous, version in [("v1", "v2"), ("v2", "v3")]:
            _promote(store, producer, previous, version)
            wait_until(lambda v=version: sum(s[0] == v for s in seen) >= CLIENTS, timeout_s=30, message=version)
            bundle = service.engine.bundle
            assert bundle.model is base.model and bundle.adapter == f"policy-{version}"  # the base, resident
        assert pm.BASE_LOADS._value.get() == base_loads  # neither adapter read the base again
        resident = base.resident
        wait_until(lambda: resident.adapters == {"policy-v3"}, timeout_s=10, message="policy-v2 unloaded")
        _promote(store, producer, "v3", "v4")
        wait_until(lambda: sum(s[0] == "v4" for s in seen) >= CLIENTS, timeout_s=30, message="v4")
        assert pm.BASE_LOADS._value.get() == base_loads + 1  # a full-weights version loads normally
        assert service.engine.bundle.model is not base.model and service.engine.bundle.adapter == ""
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        producer.close()
        service.stop(grace_s=5)
    assert errors == []
    assert {v for v, _ in seen} == {"v1", "v2", "v3", "v4"}
    wrong = [(v, text) for v, text in seen if text != expected[v]]
    assert wrong == [], f"{len(wrong)} of {len(seen)} responses differ from their version's greedy output"


def _promote(store: ModelStore, producer, previous: str, version: str) -> None:
    store.set_current("policy", version)  # as the Promoter does: CURRENT first, then the event
    event = events_pb2.ModelUpdateEvent(
        event_id=events.new_id(),
        kind=common_pb2.MODEL_KIND_POLICY,
        version=version,
        previous_version=previous,
        action=events_pb2.MODEL_UPDATE_ACTION_PROMOTE,
        created_at=events.now_timestamp(),
        manifest_sha256=store.manifest_sha256("policy", version),
    )
    produce_event(producer, events.MODEL_UPDATES_TOPIC, "policy", event).get(10)
