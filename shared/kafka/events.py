"""Topic names and the protobuf codec of Kafka record values.

Every record carries a ``content-type`` header naming its message type, so a
consumer can tell a FeedbackEvent from junk before parsing it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

GENERATIONS_TOPIC = "rlhf.generations.v1"
FEEDBACK_TOPIC = "rlhf.feedback.v1"
MODEL_UPDATES_TOPIC = "rlhf.model-updates.v1"
DEADLETTER_TOPIC = "rlhf.deadletter.v1"

# Partitions per topic when the project creates them (rlhf broker / tests).
TOPIC_PARTITIONS = {
    GENERATIONS_TOPIC: 4,
    FEEDBACK_TOPIC: 4,
    MODEL_UPDATES_TOPIC: 1,
    DEADLETTER_TOPIC: 1,
}

CONTENT_TYPE_HEADER = "content-type"

M = TypeVar("M", bound=Message)


class EventDecodeError(Exception):
    """A record value is not the message its topic carries."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def content_type(message_cls: type[Message]) -> str:
    return f"application/x-protobuf; messageType={message_cls.DESCRIPTOR.full_name}"


def encode(message: Message) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Value bytes and headers for producing ``message``."""
    return message.SerializeToString(), [(CONTENT_TYPE_HEADER, content_type(type(message)).encode())]


def decode(value: bytes | None, headers: list[tuple[str, bytes]] | None, message_cls: type[M]) -> M:
    """Parse a record value; raise EventDecodeError saying what is wrong."""
    header_map = {k.lower(): v for k, v in (headers or [])}
    declared = header_map.get(CONTENT_TYPE_HEADER)
    expected = content_type(message_cls)
    if declared is not None and declared.decode("utf-8", "replace") != expected:
        raise EventDecodeError(
            "wrong_content_type",
            f"header content-type is {declared.decode('utf-8', 'replace')!r}, expected {expected!r}",
        )
    if value is None:
        raise EventDecodeError("empty_value", "record has no value (tombstone)")
    message = message_cls()
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise EventDecodeError("decode_error", f"not a valid {message_cls.DESCRIPTOR.full_name}: {exc}") from exc
    return message


def new_id() -> str:
    return uuid.uuid4().hex


def now_timestamp() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


@dataclass(frozen=True)
class ConsumedEvent:
    """A decoded record, with where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    message: Message
