import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shared.proto.rlhf.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: _events_pb2.FeedbackEvent
    def __init__(self, feedback: _Optional[_Union[_events_pb2.FeedbackEvent, _Mapping]] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("feedback_id", "duplicate", "accepted_at", "partition", "offset")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    duplicate: bool
    accepted_at: _timestamp_pb2.Timestamp
    partition: int
    offset: int
    def __init__(self, feedback_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., accepted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class SubmitFeedbackBatchRequest(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: _containers.RepeatedCompositeFieldContainer[_events_pb2.FeedbackEvent]
    def __init__(self, feedback: _Optional[_Iterable[_Union[_events_pb2.FeedbackEvent, _Mapping]]] = ...) -> None: ...

class SubmitFeedbackBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitFeedbackResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitFeedbackResponse, _Mapping]]] = ...) -> None: ...
