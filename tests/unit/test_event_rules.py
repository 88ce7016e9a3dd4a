"""What the consumers refuse beyond the FeedbackEvent rules: generations the trainer
cannot train on, model updates a replica cannot act on, impossible timestamps.
Each was found by fuzzing the topics (tests/integration/test_fuzz_topics.py)."""

from __future__ import annotations

from services.trainer.data.ingest import generation_problems
from shared.feedback_rules import DEFAULT_LIMITS, feedback_problems
from shared.models.update_follower import update_problems
from shared.proto.rlhf.v1 import common_pb2
from shared.proto.rlhf.v1 import events_pb2 as ev


def test_a_generation_needs_an_id_and_a_prompt():
    good = ev.GenerationEvent(generation_id="g", prompt="Q: hi\nA:", response="")
    assert generation_problems(good, DEFAULT_LIMITS) == []  # an empty response is a real outcome
    fields = [f for f, _ in generation_problems(ev.GenerationEvent(prompt="  "), DEFAULT_LIMITS)]
    assert fields == ["generation_id", "prompt"]
    long_id = ev.GenerationEvent(generation_id="g" * 200, prompt="p")
    assert [f for f, _ in generation_problems(long_id, DEFAULT_LIMITS)] == ["generation_id"]


def test_timestamps_beyond_what_protobuf_allows_are_refused():
    # They decode, but Timestamp.ToNanoseconds() raised in the ledger: the handler failed
    # five times, stalled its partition, and the event went out as "handler_failed".
    generation = ev.GenerationEvent(generation_id="g", prompt="p")
    generation.created_at.seconds = 2**40
    assert [f for f, _ in generation_problems(generation, DEFAULT_LIMITS)] == ["created_at"]
    feedback = ev.FeedbackEvent(feedback_id="f", generation_id="g", rating=ev.Rating(score=0.5))
    feedback.created_at.seconds = 2**40
    assert [f for f, _ in feedback_problems(feedback)] == ["created_at"]
    feedback.created_at.seconds, feedback.created_at.nanos = 10, -1
    assert [f for f, _ in feedback_problems(feedback)] == ["created_at"]


def test_a_model_update_must_name_a_kind_and_a_version():
    # Its action is informational (CURRENT decides what a replica serves): not required.
    assert update_problems(ev.ModelUpdateEvent(kind=common_pb2.MODEL_KIND_REWARD, version="v3")) == []
    problems = update_problems(ev.ModelUpdateEvent(kind=9, version="../v1"))
    assert [p.split(":")[0] for p in problems] == ["kind", "version"]
