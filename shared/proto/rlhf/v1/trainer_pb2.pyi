import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shared.proto.rlhf.v1 import common_pb2 as _common_pb2
from shared.proto.rlhf.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINER_STATE_UNSPECIFIED: _ClassVar[TrainerState]
    TRAINER_STATE_STARTING: _ClassVar[TrainerState]
    TRAINER_STATE_IDLE: _ClassVar[TrainerState]
    TRAINER_STATE_TRAINING_REWARD: _ClassVar[TrainerState]
    TRAINER_STATE_TRAINING_POLICY: _ClassVar[TrainerState]
    TRAINER_STATE_EVALUATING: _ClassVar[TrainerState]
    TRAINER_STATE_PAUSED: _ClassVar[TrainerState]
TRAINER_STATE_UNSPECIFIED: TrainerState
TRAINER_STATE_STARTING: TrainerState
TRAINER_STATE_IDLE: TrainerState
TRAINER_STATE_TRAINING_REWARD: TrainerState
TRAINER_STATE_TRAINING_POLICY: TrainerState
TRAINER_STATE_EVALUATING: TrainerState
TRAINER_STATE_PAUSED: TrainerState

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("kind", "version", "reason", "canary_share")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.ModelKind
    version: str
    reason: str
    canary_share: float
    def __init__(self, kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ..., canary_share: _Optional[float] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("kind", "to_version", "reason")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.ModelKind
    to_version: str
    reason: str
    def __init__(self, kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., to_version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyUpdateStats(_message.Message):
    __slots__ = ("mean_reward", "kl", "kl_coef", "policy_loss", "value_loss", "clip_fraction", "entropy", "approx_kl", "samples_per_second", "step")
    MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    KL_COEF_FIELD_NUMBER: _ClassVar[int]
    POLICY_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALUE_LOSS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    APPROX_KL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    mean_reward: float
    kl: float
    kl_coef: float
    policy_loss: float
    value_loss: float
    clip_fraction: float
    entropy: float
    approx_kl: float
    samples_per_second: float
    step: int
    def __init__(self, mean_reward: _Optional[float] = ..., kl: _Optional[float] = ..., kl_coef: _Optional[float] = ..., policy_loss: _Optional[float] = ..., value_loss: _Optional[float] = ..., clip_fraction: _Optional[float] = ..., entropy: _Optional[float] = ..., approx_kl: _Optional[float] = ..., samples_per_second: _Optional[float] = ..., step: _Optional[int] = ...) -> None: ...

class CandidateReport(_message.Message):
    __slots__ = ("kind", "version", "promoted", "reason", "metrics", "decided_at")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.ModelKind
    version: str
    promoted: bool
    reason: str
    metrics: _containers.ScalarMap[str, float]
    decided_at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., version: _Optional[str] = ..., promoted: _Optional[bool] = ..., reason: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HeldoutStatus(_message.Message):
    __slots__ = ("gate_prompts", "gate_prompts_required", "reward_pairs", "reward_pairs_required", "waiting_for")
    GATE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    GATE_PROMPTS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    REWARD_PAIRS_FIELD_NUMBER: _ClassVar[int]
    REWARD_PAIRS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    gate_prompts: int
    gate_prompts_required: int
    reward_pairs: int
    reward_pairs_required: int
    waiting_for: str
    def __init__(self, gate_prompts: _Optional[int] = ..., gate_prompts_required: _Optional[int] = ..., reward_pairs: _Optional[int] = ..., reward_pairs_required: _Optional[int] = ..., waiting_for: _Optional[str] = ...) -> None: ...

class TrainerStatus(_message.Message):
    __slots__ = ("state", "policy_version", "reward_version", "feedback_counts", "generations_seen", "feedback_pending_join", "recent_candidates", "pause_reason", "consumer_lag", "heldout", "canary", "last_policy_update")
    class FeedbackCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ConsumerLagEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STATE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REWARD_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_COUNTS_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_SEEN_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_PENDING_JOIN_FIELD_NUMBER: _ClassVar[int]
    RECENT_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_LAG_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    LAST_POLICY_UPDATE_FIELD_NUMBER: _ClassVar[int]
    state: TrainerState
    policy_version: str
    reward_version: str
    feedback_counts: _containers.ScalarMap[str, int]
    generations_seen: int
    feedback_pending_join: int
    recent_candidates: _containers.RepeatedCompositeFieldContainer[CandidateReport]
    pause_reason: str
    consumer_lag: _containers.ScalarMap[str, int]
    heldout: HeldoutStatus
    canary: CanaryStatus
    last_policy_update: PolicyUpdateStats
    def __init__(self, state: _Optional[_Union[TrainerState, str]] = ..., policy_version: _Optional[str] = ..., reward_version: _Optional[str] = ..., feedback_counts: _Optional[_Mapping[str, int]] = ..., generations_seen: _Optional[int] = ..., feedback_pending_join: _Optional[int] = ..., recent_candidates: _Optional[_Iterable[_Union[CandidateReport, _Mapping]]] = ..., pause_reason: _Optional[str] = ..., consumer_lag: _Optional[_Mapping[str, int]] = ..., heldout: _Optional[_Union[HeldoutStatus, _Mapping]] = ..., canary: _Optional[_Union[CanaryStatus, _Mapping]] = ..., last_policy_update: _Optional[_Union[PolicyUpdateStats, _Mapping]] = ...) -> None: ...

class CanaryStatus(_message.Message):
    __slots__ = ("version", "stable_version", "share", "decision", "detail", "canary_feedback", "stable_feedback", "canary_score", "stable_score", "difference", "standard_error", "min_feedback", "started_at", "active")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CANARY_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    STABLE_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    CANARY_SCORE_FIELD_NUMBER: _ClassVar[int]
    STABLE_SCORE_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERROR_FIELD_NUMBER: _ClassVar[int]
    MIN_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    version: str
    stable_version: str
    share: float
    decision: str
    detail: str
    canary_feedback: int
    stable_feedback: int
    canary_score: float
    stable_score: float
    difference: float
    standard_error: float
    min_feedback: int
    started_at: _timestamp_pb2.Timestamp
    active: bool
    def __init__(self, version: _Optional[str] = ..., stable_version: _Optional[str] = ..., share: _Optional[float] = ..., decision: _Optional[str] = ..., detail: _Optional[str] = ..., canary_feedback: _Optional[int] = ..., stable_feedback: _Optional[int] = ..., canary_score: _Optional[float] = ..., stable_score: _Optional[float] = ..., difference: _Optional[float] = ..., standard_error: _Optional[float] = ..., min_feedback: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active: _Optional[bool] = ...) -> None: ...
