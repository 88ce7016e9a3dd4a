"""Regression tests for the bugs the fault-injection tests found, each on the
smallest real setup that shows it (docs/RELIABILITY.md lists them).

1. The feedback gateway answered UNAVAILABLE to every call for good after the
   broker restarted empty: its idempotent producer had hit a fatal error (the
   broker no longer knew its producer id) and kafka-python never recovers one.
2. The trainer's dead-letter producer had the same flaw, so after such a
   restart a dead letter could never be sent and its batch was retried forever.
3. An error escaping the consumer loop's poll (e.g. CommitFailedError after
   the broker forgot the group) ended the consumer thread silently: the
   trainer kept answering as SERVING and never read another event.
4. The trainer dead-lettered feedback as ``unknown_generation`` once it had
   been held ``feedback_hold_s``, even when its generation was on the broker,
   not yet read: a trainer reading a backlog often reads the feedback
   partitions first, and under load a test's marker feedback was lost for good.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from kafka.errors import CommitFailedError

from services.feedback.config import FeedbackConfig
from services.feedback.server import FeedbackGatewayServer
from services.trainer.data.ingest import TOPICS, FeedbackIngest
from services.trainer.data.ledger import FeedbackLedger
from shared.kafka import events
from shared.kafka.admin import ensure_topics
from shared.kafka.broker import EmbeddedBroker, free_port
from shared.kafka.consumer import ConsumerSettings, EventConsumerLoop
from shared.kafka.deadletter import DeadLetterProducer
from shared.kafka.producer import create_producer, produce_event
from shared.proto.rlhf.v1 import events_pb2, feedback_pb2, feedback_pb2_grpc
from tests.helpers import FAST_GROUP, FAST_GROUP_CONFIG, read_topic, start_group_at_end, wait_until


@pytest.fixture()
def restartable_broker(tmp_path):
    """A broker on a fixed port; ``restart()`` replaces it with an empty one there."""

    class Restartable:
        def __init__(self):
            self.port = free_port()
            self.broker = EmbeddedBroker(port=self.port, log_path=tmp_path / "broker.log").start()
            ensure_topics(self.broker.bootstrap)

        @property
        def bootstrap(self) -> str:
            return self.broker.bootstrap

        def restart(self) -> None:
            self.broker.stop()
            self.broker = EmbeddedBroker(port=self.port, log_path=tmp_path / "broker.log").start()
            ensure_topics(self.broker.bootstrap)

    holder = Restartable()
    yield holder
    holder.broker.stop()


def _rating(feedback_id: str) -> feedback_pb2.SubmitFeedbackRequest:
    return feedback_pb2.SubmitFeedbackRequest(
        feedback=events_pb2.FeedbackEvent(
            feedback_id=feedback_id, generation_id=f"g-{feedback_id}", rating=events_pb2.Rating(score=1.0)
        )
    )


def test_gateway_accepts_feedback_again_after_the_broker_restarts_empty(restartable_broker):
    config = FeedbackConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        kafka=restartable_broker.bootstrap,
        ack_timeout_s=3,
        log_format="text",
    )
    server = FeedbackGatewayServer(config)
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            stub.SubmitFeedback(_rating("before"), timeout=10)
            restartable_broker.restart()

            def accepted() -> bool:
                try:
                    return not stub.SubmitFeedback(_rating("after"), timeout=10).duplicate
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    return False

            wait_until(accepted, 90, 0.5, "the gateway to accept feedback again, without a restart")
        got = read_topic(restartable_broker.bootstrap, events.FEEDBACK_TOPIC, events_pb2.FeedbackEvent, min_count=1)
        assert "after" in {m.feedback_id for _, m in got}
    finally:
        server.stop(0)


def test_dead_letter_producer_recovers_after_the_broker_restarts_empty(restartable_broker):
    def new_producer():
        return create_producer(restartable_broker.bootstrap, delivery_timeout_ms=5000, request_timeout_ms=3000)

    dead_letters = DeadLetterProducer(new_producer(), "group", new_producer=new_producer)

    class Record:
        topic, partition, key, value, headers = events.FEEDBACK_TOPIC, 0, b"k", b"junk", []

        def __init__(self, offset: int):
            self.offset = offset

    dead_letters.send(Record(1), "decode_error", "before the restart")
    restartable_broker.restart()

    def sent() -> bool:
        try:
            dead_letters.send(Record(2), "decode_error", "after the restart", timeout_s=5)
            return True
        except Exception:  # noqa: BLE001 - the consumer loop retries the same way
            return False

    wait_until(sent, 90, 0.5, "a dead letter sent after the restart")
    letters = read_topic(restartable_broker.bootstrap, events.DEADLETTER_TOPIC, events_pb2.DeadLetter, min_count=1)
    assert [m.source_offset for _, m in letters] == [2]
    dead_letters.producer.close()


def test_consumer_loop_survives_an_error_after_a_batch_and_redelivers_it(broker, unique_name):
    topic = f"t-{unique_name}"
    ensure_topics(broker.bootstrap, {topic: 1})
    handled: list[str] = []
    failures = [CommitFailedError("the group forgot this member")]

    def before_commit() -> None:
        if failures:
            raise failures.pop()

    loop = EventConsumerLoop(
        # The embedded broker's group timing: with Apache's 45 s session the reconnected member
        # waited out its predecessor's session first.
        ConsumerSettings(
            bootstrap=broker.bootstrap, topics={topic: events_pb2.FeedbackEvent}, group_id=unique_name, **FAST_GROUP
        ),
        lambda event: handled.append(event.message.feedback_id),
        before_commit=before_commit,
    )
    stop = threading.Event()
    thread = loop.start(stop)
    producer = create_producer(broker.bootstrap)
    try:
        produce_event(producer, topic, "k", events_pb2.FeedbackEvent(feedback_id="first")).get(10)
        wait_until(lambda: handled.count("first") == 2, 60, message="the failed batch handled again")
        produce_event(producer, topic, "k", events_pb2.FeedbackEvent(feedback_id="second")).get(10)
        wait_until(lambda: "second" in handled, 60, message="events after the error handled")
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)
        producer.close()


def test_held_feedback_waits_while_its_generation_is_unread_on_the_broker(broker, unique_name, tmp_path: Path):
    """hold_s=0 dead-lettered held feedback at once; now the hold counts only while the
    loop has read the generations topic to its end, so a generation sitting unread on the
    broker (here: the loop is held up after the feedback's batch) still joins it."""
    start_group_at_end(broker.bootstrap, unique_name, TOPICS)
    producer = create_producer(broker.bootstrap)
    ingest = FeedbackIngest(FeedbackLedger(tmp_path / "ledger.db"), DeadLetterProducer(producer, unique_name), hold_s=0)
    options = {name.removeprefix("kafka_"): value for name, value in FAST_GROUP_CONFIG.items()}
    loop = ingest.consumer_loop(broker.bootstrap, options, group=unique_name)
    feedback_id, generation_id = f"{unique_name}-f", f"{unique_name}-g"
    feedback_read, release = threading.Event(), threading.Event()
    handle, before_commit = loop.handler, loop.before_commit

    def noting_handle(event: events.ConsumedEvent) -> None:
        handle(event)
        if getattr(event.message, "feedback_id", "") == feedback_id:
            feedback_read.set()

    def stalling_before_commit() -> None:
        assert before_commit is not None
        before_commit()
        if feedback_read.is_set() and not release.is_set():
            release.wait(60)  # the loop cannot read the generation produced meanwhile

    loop.handler, loop.before_commit = noting_handle, stalling_before_commit
    stop = threading.Event()
    thread = loop.start(stop)
    try:
        rating = events_pb2.Rating(score=0.5)
        feedback = events_pb2.FeedbackEvent(feedback_id=feedback_id, generation_id=generation_id, rating=rating)
        feedback.user_id = "u1"
        feedback.created_at.GetCurrentTime()
        produce_event(producer, events.FEEDBACK_TOPIC, generation_id, feedback).get(10)
        assert feedback_read.wait(60), "the loop never read the feedback"
        generation = events_pb2.GenerationEvent(generation_id=generation_id, prompt="How?", response="Boil.")
        generation.model_version = "v1"
        generation.created_at.GetCurrentTime()
        produce_event(producer, events.GENERATIONS_TOPIC, generation_id, generation).get(10)
        assert ingest.expire_held() == 0  # the generation is on the broker, unread
        release.set()
        wait_until(lambda: feedback_id in ingest.ledger.feedback_ids(), 60, message="the feedback joined")
    finally:
        release.set()
        stop.set()
        thread.join(10)
        producer.close()
