"""Fuzzing every consumed topic with raw bytes and wrong headers (hypothesis).

Through the real consumers on the real broker: the trainer's ingest
(EventConsumerLoop + FeedbackIngest + a real ledger) for rlhf.generations.v1
and rlhf.feedback.v1, and a replica's ModelUpdateFollower for
rlhf.model-updates.v1. Whatever arrives, the consumer keeps running, and every
record is either accepted as something usable or dead-lettered with a reason
(read back from rlhf.deadletter.v1).

Each hypothesis example is a batch of records (one round trip to the broker per
batch, not per record), so a few examples cover a few hundred records.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.trainer.data.ingest import TOPICS, FeedbackIngest
from services.trainer.data.ledger import FeedbackLedger
from shared.feedback_rules import feedback_problems, fill_defaults
from shared.kafka import events
from shared.kafka.consumer import ConsumerSettings, EventConsumerLoop
from shared.kafka.deadletter import DeadLetterProducer
from shared.kafka.producer import create_producer, produce_event
from shared.models.store import ModelStore
from shared.models.update_follower import ModelUpdateFollower
from shared.proto.rlhf.v1 import common_pb2, events_pb2
from tests.helpers import read_topic, wait_until

# CI runs a fixed, modest set of examples; RLHF_FUZZ_SCALE=20 explores 20x as many, freshly random.
SCALE = float(os.environ.get("RLHF_FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=max(1, int(4 * SCALE)),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=SCALE <= 1,
)


@pytest.fixture(scope="module")
def broker():
    """This module's own broker, in place of the session's: the garbage fuzzed onto
    the topics here must never reach the topics other tests read and decode."""
    from shared.kafka.admin import ensure_topics
    from shared.kafka.broker import EmbeddedBroker

    with EmbeddedBroker(port=0) as b:
        ensure_topics(b.bootstrap)
        yield b


MESSAGE_TYPES = (events_pb2.GenerationEvent, events_pb2.FeedbackEvent, events_pb2.ModelUpdateEvent)
# (kafka-python refuses to produce a null header value; DeadLetterProducer's test covers those.)
HEADER_VALUES = st.one_of(
    st.sampled_from([events.content_type(m).encode() for m in MESSAGE_TYPES]), st.binary(max_size=40)
)
HEADERS = st.lists(st.tuples(st.sampled_from(["content-type", "Content-Type", "x-other"]), HEADER_VALUES), max_size=3)
TEXT = st.text(max_size=40)


def structured(message_cls) -> st.SearchStrategy[bytes]:
    """Serialized messages of ``message_cls`` with arbitrary field values."""
    if message_cls is events_pb2.GenerationEvent:
        built = st.builds(
            events_pb2.GenerationEvent,
            generation_id=TEXT,
            request_id=TEXT,
            prompt=TEXT,
            response=TEXT,
            model_version=TEXT,
            user_id=TEXT,
            created_at=st.builds(_timestamp, st.integers(-(2**40), 2**40)),
        )
    elif message_cls is events_pb2.FeedbackEvent:
        built = st.builds(
            _feedback,
            feedback_id=TEXT,
            generation_id=TEXT,
            user_id=TEXT,
            kind=st.sampled_from(["rating", "preference", "correction", "flag", "deletion", None]),
            number=st.floats(allow_nan=True, allow_infinity=True),
            text=TEXT,
            enum=st.integers(-3, 8),
        )
    else:
        built = st.builds(
            events_pb2.ModelUpdateEvent,
            event_id=TEXT,
            kind=st.integers(-2, 5),
            version=st.one_of(TEXT, st.sampled_from(["v1", "v2", "v99", "v0", "../v1"])),
            manifest_sha256=TEXT,
            action=st.integers(-1, 4),
        )
    return built.map(lambda m: m.SerializeToString())


def _timestamp(seconds: int):
    ts = events.now_timestamp()
    ts.seconds = seconds
    return ts


def _feedback(feedback_id, generation_id, user_id, kind, number, text, enum) -> events_pb2.FeedbackEvent:
    event = events_pb2.FeedbackEvent(feedback_id=feedback_id, generation_id=generation_id, user_id=user_id)
    if kind == "rating":
        event.rating.score = number
    elif kind == "preference":
        event.preference.chosen_generation_id = text
        event.preference.rejected_generation_id = generation_id
    elif kind == "correction":
        event.correction.response = text
    elif kind == "flag":
        event.flag.category = enum
    elif kind == "deletion":
        event.deletion.reason = text
    return event


def records(message_cls) -> st.SearchStrategy[list[tuple[bytes | None, list]]]:
    """(value, headers) batches: raw bytes, structured messages, tombstones."""
    value = st.one_of(st.binary(max_size=200), structured(message_cls), st.none())
    return st.lists(st.tuples(value, HEADERS), min_size=10, max_size=30)


SENTINEL = (b"\xffsentinel: not protobuf", [])


def send_raw(producer, topic: str, batch) -> list[tuple[int, int]]:
    """Produce each (value, headers) as is, all with one key (so on one partition, in
    order); returns their (partition, offset)."""
    futures = [producer.send(topic, key=b"fuzz", value=value, headers=headers) for value, headers in batch]
    return [(m.partition, m.offset) for m in (f.get(timeout=10) for f in futures)]


def dead_letters_for(bootstrap: str, group: str, topic: str) -> dict[tuple[int, int], events_pb2.DeadLetter]:
    letters = read_topic(bootstrap, events.DEADLETTER_TOPIC, events_pb2.DeadLetter, timeout_s=2)
    return {
        (m.source_partition, m.source_offset): m
        for _, m in letters
        if m.consumer_group == group and m.source_topic == topic
    }


def handled(bootstrap: str, producer, topic: str, group: str, batch) -> tuple[list, dict]:
    """Send ``batch`` then a sentinel behind it; once the sentinel is dead-lettered, the
    consumer has handled every record before it. Returns (positions, dead letters)."""
    positions = send_raw(producer, topic, [*batch, SENTINEL])
    sentinel = positions.pop()

    def done():
        letters = dead_letters_for(bootstrap, group, topic)
        return letters if sentinel in letters else None

    return positions, wait_until(done, timeout_s=60, interval_s=0.2, message=f"the consumer of {topic} to catch up")


def decoded(value, headers, message_cls):
    """The message, or the reason it does not decode."""
    try:
        return events.decode(value, headers, message_cls)
    except events.EventDecodeError as exc:
        return exc.reason


# --- the trainer's ingest --------------------------------------------------------------
@pytest.fixture(scope="module")
def ingest(broker, tmp_path_factory):
    """A trainer ingest loop (new group, from the end of the topics) and its ledger path."""
    group = f"fuzz-ingest-{events.new_id()}"
    path = tmp_path_factory.mktemp("fuzz-ingest") / "ledger.sqlite"
    producer = create_producer(broker.bootstrap)
    ingest = FeedbackIngest(FeedbackLedger(path), DeadLetterProducer(producer, group), hold_s=3600)
    loop = EventConsumerLoop(
        ConsumerSettings(
            bootstrap=broker.bootstrap,
            topics=dict(TOPICS),
            group_id=group,
            from_beginning=False,
            max_handler_attempts=1,
        ),
        ingest.handle,
        dead_letters=ingest.dead_letters,
        before_commit=ingest.before_commit,
    )
    stop = threading.Event()
    thread = loop.start(stop, name="fuzz-ingest")
    assert loop.ready.wait(60), "the fuzz consumer got no partitions"
    for topic in TOPICS:  # the group starts at the end: wait until it reads what comes next

        def caught_up(topic=topic) -> bool:
            [position] = send_raw(producer, topic, [SENTINEL])
            try:
                wait_until(lambda: position in dead_letters_for(broker.bootstrap, group, topic), timeout_s=5)
            except AssertionError:
                return False
            return True

        wait_until(caught_up, timeout_s=120, interval_s=0, message=f"the fuzz consumer to read {topic}")
    yield group, path, producer, thread
    stop.set()
    thread.join(10)
    producer.close()


def usable_generations(path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT generation_id FROM generations WHERE trim(generation_id) != '' AND trim(prompt) != ''"
        )
        return {r[0] for r in rows}
    finally:
        db.close()


@pytest.mark.parametrize("topic", list(TOPICS), ids=["generations", "feedback"])
def test_the_trainer_ingest_survives_anything_and_dead_letters_what_it_refuses(broker, ingest, topic):
    group, path, producer, thread = ingest
    message_cls = TOPICS[topic]

    @FUZZ
    @given(batch=records(message_cls))
    def fuzz(batch):
        positions, letters = handled(broker.bootstrap, producer, topic, group, batch)
        assert thread.is_alive(), "the consumer must survive any record"
        usable = usable_generations(path)
        for (value, headers), position in zip(batch, positions):
            message = decoded(value, headers, message_cls)
            letter = letters.get(position)
            if isinstance(message, str):  # not a message of this topic at all
                assert letter is not None and letter.reason == message, (value, headers)
            elif message_cls is events_pb2.FeedbackEvent:
                fill_defaults(message)
                problems = feedback_problems(message)
                assert (letter is not None) == bool(problems), (message, problems, letter)
            else:  # a generation the trainer keeps must be usable: an id and a prompt to train on
                assert letter is not None or message.generation_id in usable, message
            if letter is not None:
                assert letter.reason and letter.error and letter.value == (value or b""), letter

    fuzz()


# --- a replica's model-update follower ----------------------------------------------------
def well_formed(update) -> bool:
    return (
        update.kind in (common_pb2.MODEL_KIND_POLICY, common_pb2.MODEL_KIND_REWARD)
        and re.fullmatch(r"v[0-9]+", update.version) is not None
    )


def test_a_replica_follows_good_updates_and_dead_letters_the_rest(broker, tmp_path):
    store = ModelStore(tmp_path / "store")
    for _ in range(2):
        store.write_version("policy", lambda out: (out / "model.safetensors").write_bytes(b"w"))
    loads: list[str] = []
    serving = ["v1"]

    def load(version: str, sha: str) -> None:
        loads.append(version)
        serving[0] = version

    follower = ModelUpdateFollower("policy", store, load, lambda: serving[0], broker.bootstrap)
    follower.start()
    producer = create_producer(broker.bootstrap)
    topic = events.MODEL_UPDATES_TOPIC
    try:
        assert follower.ready.wait(60)

        @FUZZ
        @given(batch=records(events_pb2.ModelUpdateEvent))
        def fuzz(batch):
            positions, letters = handled(broker.bootstrap, producer, topic, follower.dead_letter_group, batch)
            assert all(t.is_alive() for t in follower._threads), "the follower must survive any record"
            for (value, headers), position in zip(batch, positions):
                message = decoded(value, headers, events_pb2.ModelUpdateEvent)
                good = not isinstance(message, str) and well_formed(message)
                assert (position not in letters) == good, (message, letters.get(position))

        fuzz()
        # Still following: a (stale) update announcing v1 makes it serve CURRENT, v2, and nothing else.
        stale = events_pb2.ModelUpdateEvent(
            kind=common_pb2.MODEL_KIND_POLICY, version="v1", action=events_pb2.MODEL_UPDATE_ACTION_ROLLBACK
        )
        produce_event(producer, topic, "policy", stale).get(timeout=10)
        wait_until(lambda: serving[0] == "v2", timeout_s=30, message="the replica on CURRENT")
        assert set(loads) == {"v2"}
    finally:
        follower.stop()
        producer.close()
