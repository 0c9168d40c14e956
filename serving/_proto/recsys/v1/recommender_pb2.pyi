# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FallbackReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_REASON_UNSPECIFIED: _ClassVar[FallbackReason]
    FALLBACK_REASON_UNKNOWN_USER: _ClassVar[FallbackReason]
FALLBACK_REASON_UNSPECIFIED: FallbackReason
FALLBACK_REASON_UNKNOWN_USER: FallbackReason

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "recent_item_ids", "user_attributes", "exclude_item_ids", "filters", "diversity", "experiment", "force_variant")
    class UserAttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    USER_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    FORCE_VARIANT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    recent_item_ids: _containers.RepeatedScalarFieldContainer[str]
    user_attributes: _containers.ScalarMap[str, str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.RepeatedCompositeFieldContainer[ItemFilter]
    diversity: Diversity
    experiment: str
    force_variant: str
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., recent_item_ids: _Optional[_Iterable[str]] = ..., user_attributes: _Optional[_Mapping[str, str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., filters: _Optional[_Iterable[_Union[ItemFilter, _Mapping]]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ..., experiment: _Optional[str] = ..., force_variant: _Optional[str] = ...) -> None: ...

class ItemFilter(_message.Message):
    __slots__ = ("attribute", "any_of", "none_of", "min", "max")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NONE_OF_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    any_of: _containers.RepeatedScalarFieldContainer[str]
    none_of: _containers.RepeatedScalarFieldContainer[str]
    min: float
    max: float
    def __init__(self, attribute: _Optional[str] = ..., any_of: _Optional[_Iterable[str]] = ..., none_of: _Optional[_Iterable[str]] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class Diversity(_message.Message):
    __slots__ = ("mmr_lambda", "max_per_category", "category_attribute")
    MMR_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    mmr_lambda: float
    max_per_category: int
    category_attribute: str
    def __init__(self, mmr_lambda: _Optional[float] = ..., max_per_category: _Optional[int] = ..., category_attribute: _Optional[str] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "explanation_item_id")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    explanation_item_id: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., explanation_item_id: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "fallback", "fallback_reason", "variant")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    fallback: bool
    fallback_reason: FallbackReason
    variant: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., fallback: _Optional[bool] = ..., fallback_reason: _Optional[_Union[FallbackReason, str]] = ..., variant: _Optional[str] = ...) -> None: ...

class GetUserEmbeddingRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class UserEmbedding(_message.Message):
    __slots__ = ("user_id", "values", "model_version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    values: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    def __init__(self, user_id: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "filters", "exclude_item_ids")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    filters: _containers.RepeatedCompositeFieldContainer[ItemFilter]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., filters: _Optional[_Iterable[_Union[ItemFilter, _Mapping]]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class BatchRecommendRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecommendRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecommendRequest, _Mapping]]] = ...) -> None: ...

class BatchRecommendResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecommendResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[RecommendResponse, _Mapping]]] = ...) -> None: ...
