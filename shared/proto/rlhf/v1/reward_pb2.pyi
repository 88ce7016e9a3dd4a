from shared.proto.rlhf.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("prompt", "response")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    response: str
    def __init__(self, prompt: _Optional[str] = ..., response: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("score", "model_version", "ensemble_mean", "ensemble_std", "ensemble_size", "conservative_k")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_MEAN_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_STD_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONSERVATIVE_K_FIELD_NUMBER: _ClassVar[int]
    score: float
    model_version: str
    ensemble_mean: float
    ensemble_std: float
    ensemble_size: int
    conservative_k: float
    def __init__(self, score: _Optional[float] = ..., model_version: _Optional[str] = ..., ensemble_mean: _Optional[float] = ..., ensemble_std: _Optional[float] = ..., ensemble_size: _Optional[int] = ..., conservative_k: _Optional[float] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoreRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoreRequest, _Mapping]]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("scores", "model_version", "ensemble_means", "ensemble_stds", "ensemble_size", "conservative_k")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_MEANS_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_STDS_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONSERVATIVE_K_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    ensemble_means: _containers.RepeatedScalarFieldContainer[float]
    ensemble_stds: _containers.RepeatedScalarFieldContainer[float]
    ensemble_size: int
    conservative_k: float
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ..., ensemble_means: _Optional[_Iterable[float]] = ..., ensemble_stds: _Optional[_Iterable[float]] = ..., ensemble_size: _Optional[int] = ..., conservative_k: _Optional[float] = ...) -> None: ...
