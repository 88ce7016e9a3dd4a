"""EventConsumerLoop with the FeedbackEvent validator: poison messages go to
the dead-letter topic with reason and offset, the good events behind them are
handled, and committed offsets survive a restart of the group."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY

from shared.feedback_rules import validating_feedback_handler
from shared.kafka import events
from shared.kafka.admin import ensure_topics
from shared.kafka.consumer import ConsumerSettings, EventConsumerLoop
from shared.kafka.deadletter import DeadLetterProducer
from shared.kafka.producer import create_producer, produce_event
from shared.proto.rlhf.v1 import events_pb2 as ev
from tests.helpers import FAST_GROUP, read_topic, wait_until


def good(i: int) -> ev.FeedbackEvent:
    return ev.FeedbackEvent(feedback_id=f"fb-{i}", generation_id=f"gen-{i}", rating=ev.Rating(score=0.5))


def run_loop(broker, topic, group, producer, handled):
    loop = EventConsumerLoop(
        ConsumerSettings(bootstrap=broker.bootstrap, topics={topic: ev.FeedbackEvent}, group_id=group, **FAST_GROUP),
        validating_feedback_handler(lambda e: handled.append(e.message.feedback_id)),
        dead_letters=DeadLetterProducer(producer, consumer_group=group),
    )
    stop = threading.Event()
    return loop, stop, loop.start(stop)


def test_poison_messages_are_dead_lettered_and_good_ones_handled_once(broker, unique_name):
    topic = f"feedback-{unique_name}"
    group = f"group-{unique_name}"
    ensure_topics(broker.bootstrap, {topic: 1})
    producer = create_producer(broker.bootstrap)
    try:
        produce_event(producer, topic, "gen-0", good(0)).get(10)
        producer.send(topic, key=b"junk", value=b"\xff\x00 not protobuf \x07").get(10)  # offset 1
        invalid = ev.FeedbackEvent(feedback_id="bad", generation_id="gen-x", rating=ev.Rating(score=9.0))
        produce_event(producer, topic, "gen-x", invalid).get(10)  # offset 2
        for i in (1, 2):
            produce_event(producer, topic, f"gen-{i}", good(i)).get(10)

        handled: list[str] = []
        _, stop, thread = run_loop(broker, topic, group, producer, handled)
        wait_until(lambda: len(handled) >= 3, timeout_s=30, message="good events handled")
        stop.set()
        thread.join(10)
        assert handled == ["fb-0", "fb-1", "fb-2"]

        letters = [
            m
            for _, m in read_topic(broker.bootstrap, events.DEADLETTER_TOPIC, ev.DeadLetter, min_count=2)
            if m.source_topic == topic
        ]
        by_offset = {m.source_offset: m for m in letters}
        assert set(by_offset) == {1, 2}
        assert by_offset[1].reason == "decode_error" and by_offset[1].value.startswith(b"\xff\x00")
        assert by_offset[2].reason == "invalid_field" and "rating.score" in by_offset[2].error
        assert all(m.consumer_group == group for m in letters)
        for reason in ("decode_error", "invalid_field"):
            assert (
                REGISTRY.get_sample_value("rlhf_events_deadlettered_total", {"topic": topic, "reason": reason}) == 1.0
            )

        # A restarted consumer in the same group starts after the committed offsets.
        produce_event(producer, topic, "gen-3", good(3)).get(10)
        handled_again: list[str] = []
        _, stop, thread = run_loop(broker, topic, group, producer, handled_again)
        wait_until(lambda: handled_again, timeout_s=30, message="the new event handled after restart")
        stop.set()
        thread.join(10)
        assert handled_again == ["fb-3"]
        letters_after = [
            m
            for _, m in read_topic(broker.bootstrap, events.DEADLETTER_TOPIC, ev.DeadLetter)
            if m.source_topic == topic
        ]
        assert len(letters_after) == 2
    finally:
        producer.close()
