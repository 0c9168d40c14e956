# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_IMPRESSION: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_ADD_TO_CART: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_IMPRESSION: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_ADD_TO_CART: EventType
EVENT_TYPE_PURCHASE: EventType

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "experiment", "variant", "model_version", "request_id", "timestamp_ms", "value", "position", "event_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: EventType
    experiment: str
    variant: str
    model_version: str
    request_id: str
    timestamp_ms: int
    value: float
    position: int
    event_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., experiment: _Optional[str] = ..., variant: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., value: _Optional[float] = ..., position: _Optional[int] = ..., event_id: _Optional[str] = ...) -> None: ...

class LogEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class EventRejection(_message.Message):
    __slots__ = ("index", "field", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    field: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LogEventsResponse(_message.Message):
    __slots__ = ("accepted", "rejections")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejections: _containers.RepeatedCompositeFieldContainer[EventRejection]
    def __init__(self, accepted: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[EventRejection, _Mapping]]] = ...) -> None: ...
