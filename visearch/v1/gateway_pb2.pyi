from visearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Collection(_message.Message):
    __slots__ = ("name", "model_version", "shards", "default_rerank", "local_feature_type", "rerank_depth", "index_params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RERANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FEATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RERANK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_version: str
    shards: int
    default_rerank: _common_pb2.RerankMode
    local_feature_type: str
    rerank_depth: int
    index_params: _common_pb2.IndexParams
    def __init__(self, name: _Optional[str] = ..., model_version: _Optional[str] = ..., shards: _Optional[int] = ..., default_rerank: _Optional[_Union[_common_pb2.RerankMode, str]] = ..., local_feature_type: _Optional[str] = ..., rerank_depth: _Optional[int] = ..., index_params: _Optional[_Union[_common_pb2.IndexParams, _Mapping]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "default_rerank", "local_feature_type", "rerank_depth", "index_params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RERANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FEATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RERANK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_rerank: _common_pb2.RerankMode
    local_feature_type: str
    rerank_depth: int
    index_params: _common_pb2.IndexParams
    def __init__(self, name: _Optional[str] = ..., default_rerank: _Optional[_Union[_common_pb2.RerankMode, str]] = ..., local_feature_type: _Optional[str] = ..., rerank_depth: _Optional[int] = ..., index_params: _Optional[_Union[_common_pb2.IndexParams, _Mapping]] = ...) -> None: ...

class IngestItem(_message.Message):
    __slots__ = ("id", "image", "label", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: _common_pb2.Image
    label: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., label: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("collection", "items", "create_collection")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CREATE_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    items: _containers.RepeatedCompositeFieldContainer[IngestItem]
    create_collection: bool
    def __init__(self, collection: _Optional[str] = ..., items: _Optional[_Iterable[_Union[IngestItem, _Mapping]]] = ..., create_collection: _Optional[bool] = ...) -> None: ...

class IngestResult(_message.Message):
    __slots__ = ("id", "sha256", "shard", "replaced")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    id: str
    sha256: str
    shard: int
    replaced: bool
    def __init__(self, id: _Optional[str] = ..., sha256: _Optional[str] = ..., shard: _Optional[int] = ..., replaced: _Optional[bool] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[IngestResult]
    def __init__(self, results: _Optional[_Iterable[_Union[IngestResult, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "image", "k", "rerank", "require_complete", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: _common_pb2.Image
    k: int
    rerank: _common_pb2.RerankMode
    require_complete: bool
    filter: _common_pb2.Filter
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., k: _Optional[int] = ..., rerank: _Optional[_Union[_common_pb2.RerankMode, str]] = ..., require_complete: _Optional[bool] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "score", "label", "attributes", "global_score", "inliers", "reason", "sha256")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    INLIERS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    label: str
    attributes: _containers.ScalarMap[str, str]
    global_score: float
    inliers: int
    reason: str
    sha256: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., global_score: _Optional[float] = ..., inliers: _Optional[int] = ..., reason: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "partial", "missing_shards", "timings_ms", "model_version")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    HITS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    timings_ms: _containers.ScalarMap[str, float]
    model_version: str
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[int]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., model_version: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "not_found")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: str
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class ImageRecord(_message.Message):
    __slots__ = ("id", "sha256", "label", "attributes", "model_version", "shard", "ingested_at")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    sha256: str
    label: str
    attributes: _containers.ScalarMap[str, str]
    model_version: str
    shard: int
    ingested_at: float
    def __init__(self, id: _Optional[str] = ..., sha256: _Optional[str] = ..., label: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., model_version: _Optional[str] = ..., shard: _Optional[int] = ..., ingested_at: _Optional[float] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ShardStats(_message.Message):
    __slots__ = ("shard", "size", "method", "available")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    size: int
    method: str
    available: bool
    def __init__(self, shard: _Optional[int] = ..., size: _Optional[int] = ..., method: _Optional[str] = ..., available: _Optional[bool] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("collection", "images", "shards")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    images: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardStats]
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., images: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardStats, _Mapping]]] = ...) -> None: ...
