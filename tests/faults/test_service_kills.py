"""kill -9 of the policy during streams and of the feedback gateway during
batches: clients get UNAVAILABLE (never a hang: every call has a deadline),
the restarted replica serves CURRENT, and no acknowledged feedback is lost.

Real processes on the test broker: policy, feedback and trainer (paused: it
only fills its ledger). The test plays the supervisor and restarts what it
killed (`rlhf up` does that by itself: test_up_restarts.py).
"""

from __future__ import annotations

import shutil
import signal
import threading
import time

import grpc
import pytest

from shared.kafka import events
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, events_pb2, feedback_pb2, feedback_pb2_grpc, policy_pb2, policy_pb2_grpc
from tests.faults.harness import (
    SimulatedUsers,
    channel,
    kill,
    ledger_rows,
    log_tails,
    restart,
    start_stack,
    write_report,
)
from tests.helpers import read_topic, wait_until

pytestmark = pytest.mark.slow  # three services, each kill followed by a restart: about a minute per test

STREAMS = 6


@pytest.fixture(scope="module")
def kill_stack(tmp_path_factory, tiny_store, broker):
    tmp = tmp_path_factory.mktemp("kills")
    store = shutil.copytree(tiny_store, tmp / "store")
    group = f"faults-kills-{time.monotonic_ns()}"
    stack = start_stack(tmp, broker.bootstrap, store, ["policy", "feedback", "trainer"], group=group)
    yield stack, tmp / "trainer-state", ModelStore(store)
    stack.stop()


def copy_of(store: ModelStore, version: str):
    """A fill function for write_version: the files of policy ``version`` without its manifest."""
    source = store.open_version("policy", version)
    return lambda out: shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))


def _stream(stub, outcome: dict) -> None:
    """One long stream; ``outcome`` gets its chunks and how it ended."""
    request = policy_pb2.GenerateRequest(
        prompt="User: how do I boil an egg?\nAssistant:", sampling=common_pb2.SamplingParams(max_new_tokens=100)
    )
    outcome["chunks"] = []
    try:
        for chunk in stub.GenerateStream(request, timeout=60):
            outcome["chunks"].append(chunk)
        outcome["code"] = "OK"
    except grpc.RpcError as exc:
        outcome["code"] = exc.code().name


def _finished(outcome: dict) -> bool:
    return any(c.finish_reason for c in outcome.get("chunks", []))


def test_policy_killed_during_streams_gives_unavailable_and_comes_back_on_current(kill_stack, broker, unique_name):
    stack, state_dir, store = kill_stack
    users = SimulatedUsers(stack.address("policy"), stack.address("feedback"), unique_name).start()
    ch = channel(stack.address("policy"))
    stub = policy_pb2_grpc.PolicyServiceStub(ch)
    try:
        wait_until(lambda: len(users.traffic.feedback_acked) >= 5, 120, message="traffic before the kill")
        outcomes = [{} for _ in range(STREAMS)]
        readers = [threading.Thread(target=_stream, args=(stub, o), daemon=True) for o in outcomes]
        for reader in readers:
            reader.start()
        wait_until(lambda: all(o.get("chunks") or "code" in o for o in outcomes), 60, message="every stream started")
        assert kill(stack, "policy") == -signal.SIGKILL
        killed_at = time.monotonic()
        for reader in readers:
            reader.join(timeout=90)
        assert not any(r.is_alive() for r in readers), "a stream hung after the kill"
        # A stream either finished before the kill or ended UNAVAILABLE: nothing else, no hang.
        assert all((o["code"] == "OK" and _finished(o)) or o["code"] == "UNAVAILABLE" for o in outcomes), [
            o["code"] for o in outcomes
        ]
        cut = [o for o in outcomes if o["code"] == "UNAVAILABLE"]
        assert cut, "the kill landed while streams were running (100 tokens each)"
        with pytest.raises(grpc.RpcError) as down:
            stub.Generate(policy_pb2.GenerateRequest(prompt="User: hi\nAssistant:"), timeout=10)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE

        # While it is down, the operator rolls forward: the restarted replica must serve CURRENT.
        v2 = store.write_version("policy", copy_of(store, "v1"), parent_version="v1")
        store.set_current("policy", v2.version)
        restart(stack.processes["policy"])
        downtime_s = time.monotonic() - killed_at
        wait_until(
            lambda: sum(1 for t in list(users.traffic.generate_ok) if t > killed_at) >= 5,
            120,
            message=f"users answered again\n{log_tails(stack)}",
        )
        users.stop_generating()
        wait_until(lambda: users.pending_feedback() == 0, 120, message="every feedback acknowledged")
        users.stop()

        traffic = users.traffic
        assert set(traffic.generate_failed) <= {"UNAVAILABLE"}, traffic.generate_failed
        info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
        assert info.version == "v2"
        answered_after = [v for gid, v in traffic.answered.items() if v == "v2"]
        assert answered_after, "the restarted replica answered with CURRENT"

        # No acknowledged feedback is lost: each is in the ledger once, joined or
        # waiting for its generation (one the killed replica had not sent yet).
        acked = set(traffic.feedback_acked)

        def in_ledger() -> list[str]:
            return ledger_rows(state_dir, "feedback", "feedback_id", unique_name) + ledger_rows(
                state_dir, "pending_feedback", "feedback_id", unique_name
            )

        wait_until(lambda: set(in_ledger()) >= acked, 120, message=f"feedback in the ledger\n{log_tails(stack)}")
        assert len(in_ledger()) == len(set(in_ledger())) == len(acked)
        on_topic = {
            m.generation_id
            for _, m in read_topic(broker.bootstrap, events.GENERATIONS_TOPIC, events_pb2.GenerationEvent, timeout_s=10)
            if m.user_id.startswith(unique_name)
        }
        write_report(
            "policy_kill",
            {
                "downtime_s": round(downtime_s, 1),  # kill -9 to SERVING again, restarted at once
                "streams": STREAMS,
                "streams_cut_by_the_kill_unavailable": len(cut),
                "generate_calls_ok": len(traffic.generate_ok),
                "generate_calls_failed": dict(traffic.generate_failed),
                "feedback_acknowledged": len(acked),
                "feedback_lost": len(acked - set(in_ledger())),
                # Answered, but the killed replica had not yet sent its GenerationEvent.
                "generation_events_lost_in_kill": len(set(traffic.answered) - on_topic),
            },
        )
    finally:
        users.stop()
        ch.close()


def _rating_batch(prefix: str, batch: int, generation_ids: list[str]) -> list[events_pb2.FeedbackEvent]:
    return [
        events_pb2.FeedbackEvent(
            feedback_id=f"{prefix}-b{batch}-{i}",
            generation_id=gid,
            user_id=f"{prefix}-b{batch}-{i}",  # one vote per user and generation
            rating=events_pb2.Rating(score=1.0),
        )
        for i, gid in enumerate(generation_ids)
    ]


class BatchSender:
    """Threads that send SubmitFeedbackBatch calls of ``size`` ratings and retry
    a failed batch, unchanged, until it is acknowledged."""

    def __init__(self, address: str, prefix: str, generation_ids: list[str], threads: int = 3):
        self.address, self.prefix, self.generation_ids = address, prefix, generation_ids
        self.acked: dict[str, float] = {}
        self.failed: dict[str, int] = {}
        self.next_batch = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> BatchSender:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self) -> None:
        with channel(self.address) as ch:
            stub = feedback_pb2_grpc.FeedbackServiceStub(ch)
            while not self._stop.is_set():
                with self._lock:
                    batch, self.next_batch = self.next_batch, self.next_batch + 1
                request = feedback_pb2.SubmitFeedbackBatchRequest(
                    feedback=_rating_batch(self.prefix, batch, self.generation_ids)
                )
                while True:  # a batch is retried until acknowledged, even while stopping
                    try:
                        reply = stub.SubmitFeedbackBatch(request, timeout=15)
                    except grpc.RpcError as exc:
                        with self._lock:
                            self.failed[exc.code().name] = self.failed.get(exc.code().name, 0) + 1
                        time.sleep(0.2)
                        continue
                    with self._lock:
                        for result in reply.results:
                            self.acked.setdefault(result.feedback_id, time.monotonic())
                    break


def test_feedback_gateway_killed_during_batches_loses_nothing_acknowledged(kill_stack, broker, unique_name):
    stack, state_dir, _store = kill_stack
    with channel(stack.address("policy")) as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        reply = stub.Generate(
            policy_pb2.GenerateRequest(
                prompt="User: hi\nAssistant:",
                user_id=unique_name,
                sampling=common_pb2.SamplingParams(max_new_tokens=4, num_return_sequences=4),
            ),
            timeout=30,
        )
    generation_ids = [c.generation_id for c in reply.completions] * 5  # batches of 20
    sender = BatchSender(stack.address("feedback"), unique_name, generation_ids).start()
    try:
        wait_until(lambda: len(sender.acked) >= 100, 120, message="batches acknowledged before the kill")
        assert kill(stack, "feedback") == -signal.SIGKILL
        killed_at = time.monotonic()
        with channel(stack.address("feedback")) as ch, pytest.raises(grpc.RpcError) as down:
            feedback_pb2_grpc.FeedbackServiceStub(ch).SubmitFeedbackBatch(
                feedback_pb2.SubmitFeedbackBatchRequest(feedback=_rating_batch(unique_name, 10**6, generation_ids)),
                timeout=10,
            )
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        acked_at_kill = len(sender.acked)
        restart(stack.processes["feedback"])
        downtime_s = time.monotonic() - killed_at
        wait_until(lambda: len(sender.acked) >= acked_at_kill + 100, 120, message="batches acknowledged again")
    finally:
        sender.stop()
    assert set(sender.failed) <= {"UNAVAILABLE"}, sender.failed
    acked = set(sender.acked)
    wait_until(
        lambda: set(ledger_rows(state_dir, "feedback", "feedback_id", unique_name)) >= acked,
        120,
        message=f"every acknowledged feedback in the ledger\n{log_tails(stack)}",
    )
    rows = ledger_rows(state_dir, "feedback", "feedback_id", unique_name)
    assert len(rows) == len(set(rows)) == len(acked), "each acknowledged feedback exactly once"
    on_topic = [
        m.feedback_id
        for _, m in read_topic(broker.bootstrap, events.FEEDBACK_TOPIC, events_pb2.FeedbackEvent, timeout_s=10)
        if m.feedback_id.startswith(unique_name)
    ]
    write_report(
        "feedback_kill",
        {
            "downtime_s": round(downtime_s, 1),
            "feedback_acknowledged": len(acked),
            "feedback_lost": len(acked - set(rows)),
            "batch_calls_failed": sender.failed,
            # Produced before the kill, retried after it: the ledger keeps one of each.
            "duplicates_on_topic": len(on_topic) - len(set(on_topic)),
        },
    )
