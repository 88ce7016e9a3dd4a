"""The trainer's ingest of rankings: joined, expanded into weighted pairs, and
dead-lettered to the real broker when they mix prompts."""

from __future__ import annotations

import pytest

from services.trainer.data.ingest import FeedbackIngest
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.data.ledger_joins import MIXED_PROMPTS
from shared.kafka import events
from shared.kafka.consumer import InvalidEvent
from shared.kafka.deadletter import DeadLetterProducer
from shared.kafka.events import ConsumedEvent
from shared.kafka.producer import create_producer
from shared.proto.rlhf.v1 import events_pb2 as ev
from tests.helpers import read_topic, wait_until


def generation(gid: str, prompt: str) -> ConsumedEvent:
    message = ev.GenerationEvent(
        generation_id=gid, request_id="req", prompt=prompt, response=f"answer {gid}", model_version="v1"
    )
    return ConsumedEvent(events.GENERATIONS_TOPIC, 0, 0, gid.encode(), message)


def ranking(fid: str, *groups: list[str], offset: int = 0) -> ConsumedEvent:
    message = ev.FeedbackEvent(
        feedback_id=fid,
        user_id="ranker",
        ranking=ev.Ranking(groups=[ev.RankedGroup(generation_ids=g) for g in groups]),
    )
    return ConsumedEvent(events.FEEDBACK_TOPIC, 0, offset, groups[0][0].encode(), message)


@pytest.fixture()
def ingest(broker, tmp_path):
    producer = create_producer(broker.bootstrap)
    group = f"ranking-ingest-{events.new_id()}"
    ingest = FeedbackIngest(FeedbackLedger(tmp_path / "ledger.sqlite"), DeadLetterProducer(producer, group), hold_s=60)
    yield ingest, group
    ingest.ledger.close()
    producer.close()


def letters_of(broker, group: str) -> list[ev.DeadLetter]:
    return [
        m for _, m in read_topic(broker.bootstrap, events.DEADLETTER_TOPIC, ev.DeadLetter) if m.consumer_group == group
    ]


def test_a_ranking_is_joined_and_expanded_with_ties(ingest):
    ingest, _ = ingest
    ingest.handle(ranking("r1", ["a"], ["b", "c"]))  # before its generations: held
    for gid in "abc":
        ingest.handle(generation(gid, "P"))
    ingest.before_commit()
    pairs = {(c.chosen, c.rejected): c.weight for c in ingest.ledger.comparisons()}
    assert pairs == {("answer a", "answer b"): pytest.approx(2 / 3), ("answer a", "answer c"): pytest.approx(2 / 3)}


def test_rankings_mixing_prompts_are_dead_lettered_with_the_reason(broker, ingest):
    ingest, group = ingest
    ingest.handle(generation("p1", "P"))
    ingest.handle(generation("q1", "Q"))
    with pytest.raises(InvalidEvent) as info:  # all known: the consumer loop dead-letters it
        ingest.handle(ranking("r-now", ["p1"], ["q1"]))
    assert info.value.reason == MIXED_PROMPTS
    ingest.handle(ranking("r-held", ["p1"], ["q2"], offset=41))  # q2 not yet known: held
    ingest.handle(generation("q2", "Q"))
    ingest.before_commit()
    wait_until(lambda: letters_of(broker, group), timeout_s=30, message="the held ranking's dead letter")
    [letter] = letters_of(broker, group)
    assert letter.reason == MIXED_PROMPTS and letter.source_offset == 41 and "r-held" in letter.error
    assert ev.FeedbackEvent.FromString(letter.value).feedback_id == "r-held"
    assert ingest.ledger.comparisons() == [] and ingest.ledger.pending_count() == 0
