# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SeedScoring(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEED_SCORING_UNSPECIFIED: _ClassVar[SeedScoring]
    SEED_SCORING_CONTRAST: _ClassVar[SeedScoring]
    SEED_SCORING_CENTROID: _ClassVar[SeedScoring]
    SEED_SCORING_NEAREST_SEED: _ClassVar[SeedScoring]
SEED_SCORING_UNSPECIFIED: SeedScoring
SEED_SCORING_CONTRAST: SeedScoring
SEED_SCORING_CENTROID: SeedScoring
SEED_SCORING_NEAREST_SEED: SeedScoring

class FindSimilarUsersRequest(_message.Message):
    __slots__ = ("seed_user_ids", "size", "scoring")
    SEED_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SCORING_FIELD_NUMBER: _ClassVar[int]
    seed_user_ids: _containers.RepeatedScalarFieldContainer[str]
    size: int
    scoring: SeedScoring
    def __init__(self, seed_user_ids: _Optional[_Iterable[str]] = ..., size: _Optional[int] = ..., scoring: _Optional[_Union[SeedScoring, str]] = ...) -> None: ...

class SimilarUser(_message.Message):
    __slots__ = ("user_id", "score")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    score: float
    def __init__(self, user_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class FindSimilarUsersResponse(_message.Message):
    __slots__ = ("users", "model_version", "unknown_seed_count", "known_seed_count")
    USERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_SEED_COUNT_FIELD_NUMBER: _ClassVar[int]
    KNOWN_SEED_COUNT_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[SimilarUser]
    model_version: str
    unknown_seed_count: int
    known_seed_count: int
    def __init__(self, users: _Optional[_Iterable[_Union[SimilarUser, _Mapping]]] = ..., model_version: _Optional[str] = ..., unknown_seed_count: _Optional[int] = ..., known_seed_count: _Optional[int] = ...) -> None: ...
