import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shared.proto.rlhf.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP_SEQUENCE: _ClassVar[FinishReason]

class FeedbackSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_SOURCE_UNSPECIFIED: _ClassVar[FeedbackSource]
    FEEDBACK_SOURCE_END_USER: _ClassVar[FeedbackSource]
    FEEDBACK_SOURCE_ANNOTATOR: _ClassVar[FeedbackSource]
    FEEDBACK_SOURCE_AUTOMATED: _ClassVar[FeedbackSource]

class Thumb(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THUMB_UNSPECIFIED: _ClassVar[Thumb]
    THUMB_UP: _ClassVar[Thumb]
    THUMB_DOWN: _ClassVar[Thumb]

class FlagCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLAG_CATEGORY_UNSPECIFIED: _ClassVar[FlagCategory]
    FLAG_CATEGORY_UNSAFE: _ClassVar[FlagCategory]
    FLAG_CATEGORY_OFFENSIVE: _ClassVar[FlagCategory]
    FLAG_CATEGORY_WRONG: _ClassVar[FlagCategory]
    FLAG_CATEGORY_OTHER: _ClassVar[FlagCategory]

class ModelUpdateAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_UPDATE_ACTION_UNSPECIFIED: _ClassVar[ModelUpdateAction]
    MODEL_UPDATE_ACTION_PROMOTE: _ClassVar[ModelUpdateAction]
    MODEL_UPDATE_ACTION_ROLLBACK: _ClassVar[ModelUpdateAction]
    MODEL_UPDATE_ACTION_CANARY_START: _ClassVar[ModelUpdateAction]
    MODEL_UPDATE_ACTION_CANARY_COMPLETE: _ClassVar[ModelUpdateAction]
    MODEL_UPDATE_ACTION_CANARY_ROLLBACK: _ClassVar[ModelUpdateAction]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP_SEQUENCE: FinishReason
FEEDBACK_SOURCE_UNSPECIFIED: FeedbackSource
FEEDBACK_SOURCE_END_USER: FeedbackSource
FEEDBACK_SOURCE_ANNOTATOR: FeedbackSource
FEEDBACK_SOURCE_AUTOMATED: FeedbackSource
THUMB_UNSPECIFIED: Thumb
THUMB_UP: Thumb
THUMB_DOWN: Thumb
FLAG_CATEGORY_UNSPECIFIED: FlagCategory
FLAG_CATEGORY_UNSAFE: FlagCategory
FLAG_CATEGORY_OFFENSIVE: FlagCategory
FLAG_CATEGORY_WRONG: FlagCategory
FLAG_CATEGORY_OTHER: FlagCategory
MODEL_UPDATE_ACTION_UNSPECIFIED: ModelUpdateAction
MODEL_UPDATE_ACTION_PROMOTE: ModelUpdateAction
MODEL_UPDATE_ACTION_ROLLBACK: ModelUpdateAction
MODEL_UPDATE_ACTION_CANARY_START: ModelUpdateAction
MODEL_UPDATE_ACTION_CANARY_COMPLETE: ModelUpdateAction
MODEL_UPDATE_ACTION_CANARY_ROLLBACK: ModelUpdateAction

class GenerationEvent(_message.Message):
    __slots__ = ("event_id", "generation_id", "request_id", "prompt", "response", "model_version", "sampling", "created_at", "prompt_tokens", "completion_tokens", "finish_reason", "sequence_index", "user_id", "metadata", "messages")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    generation_id: str
    request_id: str
    prompt: str
    response: str
    model_version: str
    sampling: _common_pb2.SamplingParams
    created_at: _timestamp_pb2.Timestamp
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    sequence_index: int
    user_id: str
    metadata: _containers.ScalarMap[str, str]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    def __init__(self, event_id: _Optional[str] = ..., generation_id: _Optional[str] = ..., request_id: _Optional[str] = ..., prompt: _Optional[str] = ..., response: _Optional[str] = ..., model_version: _Optional[str] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., sequence_index: _Optional[int] = ..., user_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class Rating(_message.Message):
    __slots__ = ("score", "thumb")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THUMB_FIELD_NUMBER: _ClassVar[int]
    score: float
    thumb: Thumb
    def __init__(self, score: _Optional[float] = ..., thumb: _Optional[_Union[Thumb, str]] = ...) -> None: ...

class Preference(_message.Message):
    __slots__ = ("chosen_generation_id", "rejected_generation_id")
    CHOSEN_GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    REJECTED_GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    chosen_generation_id: str
    rejected_generation_id: str
    def __init__(self, chosen_generation_id: _Optional[str] = ..., rejected_generation_id: _Optional[str] = ...) -> None: ...

class RankedGroup(_message.Message):
    __slots__ = ("generation_ids",)
    GENERATION_IDS_FIELD_NUMBER: _ClassVar[int]
    generation_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, generation_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Ranking(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[RankedGroup]
    def __init__(self, groups: _Optional[_Iterable[_Union[RankedGroup, _Mapping]]] = ...) -> None: ...

class Correction(_message.Message):
    __slots__ = ("response",)
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    response: str
    def __init__(self, response: _Optional[str] = ...) -> None: ...

class Flag(_message.Message):
    __slots__ = ("category",)
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    category: FlagCategory
    def __init__(self, category: _Optional[_Union[FlagCategory, str]] = ...) -> None: ...

class DataDeletionRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class FeedbackEvent(_message.Message):
    __slots__ = ("feedback_id", "generation_id", "user_id", "created_at", "source", "comment", "rating", "preference", "correction", "flag", "deletion", "ranking", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    DELETION_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    generation_id: str
    user_id: str
    created_at: _timestamp_pb2.Timestamp
    source: FeedbackSource
    comment: str
    rating: Rating
    preference: Preference
    correction: Correction
    flag: Flag
    deletion: DataDeletionRequest
    ranking: Ranking
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, feedback_id: _Optional[str] = ..., generation_id: _Optional[str] = ..., user_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[FeedbackSource, str]] = ..., comment: _Optional[str] = ..., rating: _Optional[_Union[Rating, _Mapping]] = ..., preference: _Optional[_Union[Preference, _Mapping]] = ..., correction: _Optional[_Union[Correction, _Mapping]] = ..., flag: _Optional[_Union[Flag, _Mapping]] = ..., deletion: _Optional[_Union[DataDeletionRequest, _Mapping]] = ..., ranking: _Optional[_Union[Ranking, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelUpdateEvent(_message.Message):
    __slots__ = ("event_id", "kind", "version", "previous_version", "action", "created_at", "reason", "eval_metrics", "manifest_sha256", "canary_share")
    class EvalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    kind: _common_pb2.ModelKind
    version: str
    previous_version: str
    action: ModelUpdateAction
    created_at: _timestamp_pb2.Timestamp
    reason: str
    eval_metrics: _containers.ScalarMap[str, float]
    manifest_sha256: str
    canary_share: float
    def __init__(self, event_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ..., action: _Optional[_Union[ModelUpdateAction, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., eval_metrics: _Optional[_Mapping[str, float]] = ..., manifest_sha256: _Optional[str] = ..., canary_share: _Optional[float] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("source_topic", "source_partition", "source_offset", "key", "value", "reason", "error", "consumer_group", "failed_at", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes
    value: bytes
    reason: str
    error: str
    consumer_group: str
    failed_at: _timestamp_pb2.Timestamp
    headers: _containers.ScalarMap[str, str]
    def __init__(self, source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., reason: _Optional[str] = ..., error: _Optional[str] = ..., consumer_group: _Optional[str] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...
