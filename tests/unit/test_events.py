import pytest

from shared.kafka import events
from shared.proto.rlhf.v1 import events_pb2


def test_roundtrip_with_content_type_header():
    msg = events_pb2.FeedbackEvent(feedback_id="f1", generation_id="g1", rating=events_pb2.Rating(score=0.5))
    value, headers = events.encode(msg)
    assert dict(headers)["content-type"].endswith(b"messageType=rlhf.v1.FeedbackEvent")
    assert events.decode(value, headers, events_pb2.FeedbackEvent) == msg


def test_wrong_content_type_is_named():
    value, headers = events.encode(events_pb2.GenerationEvent(generation_id="g"))
    with pytest.raises(events.EventDecodeError) as err:
        events.decode(value, headers, events_pb2.FeedbackEvent)
    assert err.value.reason == "wrong_content_type"


def test_garbage_bytes_are_a_decode_error():
    with pytest.raises(events.EventDecodeError) as err:
        events.decode(b"\xff\xff\xff\xff", None, events_pb2.FeedbackEvent)
    assert err.value.reason == "decode_error"


def test_tombstone_is_refused():
    with pytest.raises(events.EventDecodeError) as err:
        events.decode(None, None, events_pb2.FeedbackEvent)
    assert err.value.reason == "empty_value"
