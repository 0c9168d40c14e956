# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LifecycleStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIFECYCLE_STAGE_UNSPECIFIED: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_NEW: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_ACTIVE: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_AT_RISK: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_DORMANT: _ClassVar[LifecycleStage]
    LIFECYCLE_STAGE_CHURNED: _ClassVar[LifecycleStage]
LIFECYCLE_STAGE_UNSPECIFIED: LifecycleStage
LIFECYCLE_STAGE_NEW: LifecycleStage
LIFECYCLE_STAGE_ACTIVE: LifecycleStage
LIFECYCLE_STAGE_AT_RISK: LifecycleStage
LIFECYCLE_STAGE_DORMANT: LifecycleStage
LIFECYCLE_STAGE_CHURNED: LifecycleStage

class GetUserProfileRequest(_message.Message):
    __slots__ = ("user_id", "include_embedding")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    include_embedding: bool
    def __init__(self, user_id: _Optional[str] = ..., include_embedding: _Optional[bool] = ...) -> None: ...

class UserProfile(_message.Message):
    __slots__ = ("user_id", "model_version", "clock", "attributes", "behaviour", "rfm", "lifecycle", "segment", "churn", "embedding", "propensity", "activity", "lifetime_value", "abnormal", "as_of", "live_events")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_FIELD_NUMBER: _ClassVar[int]
    RFM_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    CHURN_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_VALUE_FIELD_NUMBER: _ClassVar[int]
    ABNORMAL_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    LIVE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    model_version: str
    clock: int
    attributes: _containers.ScalarMap[str, str]
    behaviour: Behaviour
    rfm: Rfm
    lifecycle: Lifecycle
    segment: EmbeddingSegment
    churn: ChurnRisk
    embedding: _containers.RepeatedScalarFieldContainer[float]
    propensity: PurchasePropensity
    activity: ActivityForecast
    lifetime_value: LifetimeValue
    abnormal: AbnormalBehaviour
    as_of: int
    live_events: int
    def __init__(self, user_id: _Optional[str] = ..., model_version: _Optional[str] = ..., clock: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., behaviour: _Optional[_Union[Behaviour, _Mapping]] = ..., rfm: _Optional[_Union[Rfm, _Mapping]] = ..., lifecycle: _Optional[_Union[Lifecycle, _Mapping]] = ..., segment: _Optional[_Union[EmbeddingSegment, _Mapping]] = ..., churn: _Optional[_Union[ChurnRisk, _Mapping]] = ..., embedding: _Optional[_Iterable[float]] = ..., propensity: _Optional[_Union[PurchasePropensity, _Mapping]] = ..., activity: _Optional[_Union[ActivityForecast, _Mapping]] = ..., lifetime_value: _Optional[_Union[LifetimeValue, _Mapping]] = ..., abnormal: _Optional[_Union[AbnormalBehaviour, _Mapping]] = ..., as_of: _Optional[int] = ..., live_events: _Optional[int] = ...) -> None: ...

class Behaviour(_message.Message):
    __slots__ = ("event_counts", "total_events", "first_activity", "last_activity", "active_days", "top_hours", "top_weekdays", "preferences", "average_value", "has_average_value")
    class EventCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EVENT_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EVENTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_DAYS_FIELD_NUMBER: _ClassVar[int]
    TOP_HOURS_FIELD_NUMBER: _ClassVar[int]
    TOP_WEEKDAYS_FIELD_NUMBER: _ClassVar[int]
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_AVERAGE_VALUE_FIELD_NUMBER: _ClassVar[int]
    event_counts: _containers.ScalarMap[str, int]
    total_events: int
    first_activity: int
    last_activity: int
    active_days: int
    top_hours: _containers.RepeatedScalarFieldContainer[int]
    top_weekdays: _containers.RepeatedScalarFieldContainer[int]
    preferences: _containers.RepeatedCompositeFieldContainer[AttributeShare]
    average_value: float
    has_average_value: bool
    def __init__(self, event_counts: _Optional[_Mapping[str, int]] = ..., total_events: _Optional[int] = ..., first_activity: _Optional[int] = ..., last_activity: _Optional[int] = ..., active_days: _Optional[int] = ..., top_hours: _Optional[_Iterable[int]] = ..., top_weekdays: _Optional[_Iterable[int]] = ..., preferences: _Optional[_Iterable[_Union[AttributeShare, _Mapping]]] = ..., average_value: _Optional[float] = ..., has_average_value: _Optional[bool] = ...) -> None: ...

class AttributeShare(_message.Message):
    __slots__ = ("attribute", "value", "share")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    value: str
    share: float
    def __init__(self, attribute: _Optional[str] = ..., value: _Optional[str] = ..., share: _Optional[float] = ...) -> None: ...

class Rfm(_message.Message):
    __slots__ = ("recency_days", "frequency", "monetary", "r_score", "f_score", "m_score", "segment", "monetary_source")
    RECENCY_DAYS_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    MONETARY_FIELD_NUMBER: _ClassVar[int]
    R_SCORE_FIELD_NUMBER: _ClassVar[int]
    F_SCORE_FIELD_NUMBER: _ClassVar[int]
    M_SCORE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    MONETARY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    recency_days: float
    frequency: int
    monetary: float
    r_score: int
    f_score: int
    m_score: int
    segment: str
    monetary_source: str
    def __init__(self, recency_days: _Optional[float] = ..., frequency: _Optional[int] = ..., monetary: _Optional[float] = ..., r_score: _Optional[int] = ..., f_score: _Optional[int] = ..., m_score: _Optional[int] = ..., segment: _Optional[str] = ..., monetary_source: _Optional[str] = ...) -> None: ...

class Lifecycle(_message.Message):
    __slots__ = ("stage", "tenure_days", "recency_days")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TENURE_DAYS_FIELD_NUMBER: _ClassVar[int]
    RECENCY_DAYS_FIELD_NUMBER: _ClassVar[int]
    stage: LifecycleStage
    tenure_days: float
    recency_days: float
    def __init__(self, stage: _Optional[_Union[LifecycleStage, str]] = ..., tenure_days: _Optional[float] = ..., recency_days: _Optional[float] = ...) -> None: ...

class AttributeLift(_message.Message):
    __slots__ = ("attribute", "value", "share", "overall_share", "lift")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    OVERALL_SHARE_FIELD_NUMBER: _ClassVar[int]
    LIFT_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    value: str
    share: float
    overall_share: float
    lift: float
    def __init__(self, attribute: _Optional[str] = ..., value: _Optional[str] = ..., share: _Optional[float] = ..., overall_share: _Optional[float] = ..., lift: _Optional[float] = ...) -> None: ...

class EmbeddingSegment(_message.Message):
    __slots__ = ("segment_id", "label", "size", "top_item_attributes", "top_user_attributes")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TOP_ITEM_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    TOP_USER_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    segment_id: int
    label: str
    size: int
    top_item_attributes: _containers.RepeatedCompositeFieldContainer[AttributeLift]
    top_user_attributes: _containers.RepeatedCompositeFieldContainer[AttributeLift]
    def __init__(self, segment_id: _Optional[int] = ..., label: _Optional[str] = ..., size: _Optional[int] = ..., top_item_attributes: _Optional[_Iterable[_Union[AttributeLift, _Mapping]]] = ..., top_user_attributes: _Optional[_Iterable[_Union[AttributeLift, _Mapping]]] = ...) -> None: ...

class ChurnRisk(_message.Message):
    __slots__ = ("probability", "horizon_days", "model_auc", "available")
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    HORIZON_DAYS_FIELD_NUMBER: _ClassVar[int]
    MODEL_AUC_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    probability: float
    horizon_days: float
    model_auc: float
    available: bool
    def __init__(self, probability: _Optional[float] = ..., horizon_days: _Optional[float] = ..., model_auc: _Optional[float] = ..., available: _Optional[bool] = ...) -> None: ...

class PurchasePropensity(_message.Message):
    __slots__ = ("probability", "horizon_days", "model_auc", "recency_rule_auc", "available")
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    HORIZON_DAYS_FIELD_NUMBER: _ClassVar[int]
    MODEL_AUC_FIELD_NUMBER: _ClassVar[int]
    RECENCY_RULE_AUC_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    probability: float
    horizon_days: float
    model_auc: float
    recency_rule_auc: float
    available: bool
    def __init__(self, probability: _Optional[float] = ..., horizon_days: _Optional[float] = ..., model_auc: _Optional[float] = ..., recency_rule_auc: _Optional[float] = ..., available: _Optional[bool] = ...) -> None: ...

class ActivityForecast(_message.Message):
    __slots__ = ("expected_active_days", "horizon_days", "model_mae", "run_rate_rule_mae", "available")
    EXPECTED_ACTIVE_DAYS_FIELD_NUMBER: _ClassVar[int]
    HORIZON_DAYS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MAE_FIELD_NUMBER: _ClassVar[int]
    RUN_RATE_RULE_MAE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    expected_active_days: float
    horizon_days: float
    model_mae: float
    run_rate_rule_mae: float
    available: bool
    def __init__(self, expected_active_days: _Optional[float] = ..., horizon_days: _Optional[float] = ..., model_mae: _Optional[float] = ..., run_rate_rule_mae: _Optional[float] = ..., available: _Optional[bool] = ...) -> None: ...

class LifetimeValue(_message.Message):
    __slots__ = ("available", "expected_purchases", "probability_alive", "horizon_days", "has_money", "expected_order_value", "value", "reason")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_PURCHASES_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_ALIVE_FIELD_NUMBER: _ClassVar[int]
    HORIZON_DAYS_FIELD_NUMBER: _ClassVar[int]
    HAS_MONEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ORDER_VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    available: bool
    expected_purchases: float
    probability_alive: float
    horizon_days: float
    has_money: bool
    expected_order_value: float
    value: float
    reason: str
    def __init__(self, available: _Optional[bool] = ..., expected_purchases: _Optional[float] = ..., probability_alive: _Optional[float] = ..., horizon_days: _Optional[float] = ..., has_money: _Optional[bool] = ..., expected_order_value: _Optional[float] = ..., value: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class AbnormalBehaviour(_message.Message):
    __slots__ = ("flagged", "score", "reasons", "available")
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    flagged: bool
    score: float
    reasons: _containers.RepeatedScalarFieldContainer[str]
    available: bool
    def __init__(self, flagged: _Optional[bool] = ..., score: _Optional[float] = ..., reasons: _Optional[_Iterable[str]] = ..., available: _Optional[bool] = ...) -> None: ...
