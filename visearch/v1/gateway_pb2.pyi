from visearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApiKey(_message.Message):
    __slots__ = ("id", "name", "grants", "created_at", "revoked_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    grants: _containers.RepeatedScalarFieldContainer[str]
    created_at: float
    revoked_at: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., grants: _Optional[_Iterable[str]] = ..., created_at: _Optional[float] = ..., revoked_at: _Optional[float] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("name", "grants")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    grants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., grants: _Optional[_Iterable[str]] = ...) -> None: ...

class CreatedApiKey(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    secret: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "model_version", "shards", "default_rerank", "local_feature_type", "rerank_depth", "index_params", "texture_features", "query_expansion", "target_shards", "generation", "pending_model_version", "dba_top_n", "dba_alpha", "dba_pass", "dba_pending_pass")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RERANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FEATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RERANK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    QUERY_EXPANSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_SHARDS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PENDING_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DBA_TOP_N_FIELD_NUMBER: _ClassVar[int]
    DBA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    DBA_PASS_FIELD_NUMBER: _ClassVar[int]
    DBA_PENDING_PASS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_version: str
    shards: int
    default_rerank: _common_pb2.RerankMode
    local_feature_type: str
    rerank_depth: int
    index_params: _common_pb2.IndexParams
    texture_features: bool
    query_expansion: QueryExpansion
    target_shards: int
    generation: int
    pending_model_version: str
    dba_top_n: int
    dba_alpha: float
    dba_pass: int
    dba_pending_pass: int
    def __init__(self, name: _Optional[str] = ..., model_version: _Optional[str] = ..., shards: _Optional[int] = ..., default_rerank: _Optional[_Union[_common_pb2.RerankMode, str]] = ..., local_feature_type: _Optional[str] = ..., rerank_depth: _Optional[int] = ..., index_params: _Optional[_Union[_common_pb2.IndexParams, _Mapping]] = ..., texture_features: _Optional[bool] = ..., query_expansion: _Optional[_Union[QueryExpansion, _Mapping]] = ..., target_shards: _Optional[int] = ..., generation: _Optional[int] = ..., pending_model_version: _Optional[str] = ..., dba_top_n: _Optional[int] = ..., dba_alpha: _Optional[float] = ..., dba_pass: _Optional[int] = ..., dba_pending_pass: _Optional[int] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "default_rerank", "local_feature_type", "rerank_depth", "index_params", "texture_features", "query_expansion", "model_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RERANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FEATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RERANK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    QUERY_EXPANSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_rerank: _common_pb2.RerankMode
    local_feature_type: str
    rerank_depth: int
    index_params: _common_pb2.IndexParams
    texture_features: bool
    query_expansion: QueryExpansion
    model_version: str
    def __init__(self, name: _Optional[str] = ..., default_rerank: _Optional[_Union[_common_pb2.RerankMode, str]] = ..., local_feature_type: _Optional[str] = ..., rerank_depth: _Optional[int] = ..., index_params: _Optional[_Union[_common_pb2.IndexParams, _Mapping]] = ..., texture_features: _Optional[bool] = ..., query_expansion: _Optional[_Union[QueryExpansion, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class QueryExpansion(_message.Message):
    __slots__ = ("top_n", "alpha", "verified")
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    top_n: int
    alpha: float
    verified: bool
    def __init__(self, top_n: _Optional[int] = ..., alpha: _Optional[float] = ..., verified: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("collection", "image", "k", "rerank", "require_complete", "filter", "return_matches", "query_expansion")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RETURN_MATCHES_FIELD_NUMBER: _ClassVar[int]
    QUERY_EXPANSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: _common_pb2.Image
    k: int
    rerank: _common_pb2.RerankMode
    require_complete: bool
    filter: _common_pb2.Filter
    return_matches: bool
    query_expansion: QueryExpansion
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., k: _Optional[int] = ..., rerank: _Optional[_Union[_common_pb2.RerankMode, str]] = ..., require_complete: _Optional[bool] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ..., return_matches: _Optional[bool] = ..., query_expansion: _Optional[_Union[QueryExpansion, _Mapping]] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "score", "label", "attributes", "global_score", "inliers", "reason", "sha256", "matches", "inlier_ratio", "predicted_label", "label_margin", "inlier_keypoints")
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
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    INLIER_RATIO_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_MARGIN_FIELD_NUMBER: _ClassVar[int]
    INLIER_KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    label: str
    attributes: _containers.ScalarMap[str, str]
    global_score: float
    inliers: int
    reason: str
    sha256: str
    matches: int
    inlier_ratio: float
    predicted_label: str
    label_margin: float
    inlier_keypoints: bytes
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., global_score: _Optional[float] = ..., inliers: _Optional[int] = ..., reason: _Optional[str] = ..., sha256: _Optional[str] = ..., matches: _Optional[int] = ..., inlier_ratio: _Optional[float] = ..., predicted_label: _Optional[str] = ..., label_margin: _Optional[float] = ..., inlier_keypoints: _Optional[bytes] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "partial", "missing_shards", "timings_ms", "model_version", "rerank_degraded", "rerank_degraded_reason")
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
    RERANK_DEGRADED_FIELD_NUMBER: _ClassVar[int]
    RERANK_DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    timings_ms: _containers.ScalarMap[str, float]
    model_version: str
    rerank_degraded: bool
    rerank_degraded_reason: str
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[int]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., model_version: _Optional[str] = ..., rerank_degraded: _Optional[bool] = ..., rerank_degraded_reason: _Optional[str] = ...) -> None: ...

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

class ImageData(_message.Message):
    __slots__ = ("id", "sha256", "data")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    sha256: str
    data: bytes
    def __init__(self, id: _Optional[str] = ..., sha256: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

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

class ReembedRequest(_message.Message):
    __slots__ = ("collection", "model_version", "batch_size", "max_images_per_second", "drop_grace_seconds")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DROP_GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    model_version: str
    batch_size: int
    max_images_per_second: float
    drop_grace_seconds: float
    def __init__(self, collection: _Optional[str] = ..., model_version: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_images_per_second: _Optional[float] = ..., drop_grace_seconds: _Optional[float] = ...) -> None: ...

class ReembedProgress(_message.Message):
    __slots__ = ("collection", "model_version", "previous_model_version", "phase", "generation", "total", "done", "batches_total", "batches_done", "batches_skipped")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BATCHES_DONE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    collection: str
    model_version: str
    previous_model_version: str
    phase: str
    generation: int
    total: int
    done: int
    batches_total: int
    batches_done: int
    batches_skipped: int
    def __init__(self, collection: _Optional[str] = ..., model_version: _Optional[str] = ..., previous_model_version: _Optional[str] = ..., phase: _Optional[str] = ..., generation: _Optional[int] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., batches_total: _Optional[int] = ..., batches_done: _Optional[int] = ..., batches_skipped: _Optional[int] = ...) -> None: ...

class AugmentDatabaseRequest(_message.Message):
    __slots__ = ("collection", "top_n", "alpha", "page_size", "drop_grace_seconds")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DROP_GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    top_n: int
    alpha: float
    page_size: int
    drop_grace_seconds: float
    def __init__(self, collection: _Optional[str] = ..., top_n: _Optional[int] = ..., alpha: _Optional[float] = ..., page_size: _Optional[int] = ..., drop_grace_seconds: _Optional[float] = ...) -> None: ...

class AugmentDatabaseProgress(_message.Message):
    __slots__ = ("collection", "phase", "dba_pass", "total", "done")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DBA_PASS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    phase: str
    dba_pass: int
    total: int
    done: int
    def __init__(self, collection: _Optional[str] = ..., phase: _Optional[str] = ..., dba_pass: _Optional[int] = ..., total: _Optional[int] = ..., done: _Optional[int] = ...) -> None: ...

class ReshardRequest(_message.Message):
    __slots__ = ("collection", "shards")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    shards: int
    def __init__(self, collection: _Optional[str] = ..., shards: _Optional[int] = ...) -> None: ...

class GetReshardStatusRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ReshardStatus(_message.Message):
    __slots__ = ("collection", "from_shards", "to_shards", "phase", "running", "scanned", "total", "copied", "skipped", "removed", "error", "started_at", "updated_at")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FROM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    TO_SHARDS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SCANNED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    COPIED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    from_shards: int
    to_shards: int
    phase: str
    running: bool
    scanned: int
    total: int
    copied: int
    skipped: int
    removed: int
    error: str
    started_at: float
    updated_at: float
    def __init__(self, collection: _Optional[str] = ..., from_shards: _Optional[int] = ..., to_shards: _Optional[int] = ..., phase: _Optional[str] = ..., running: _Optional[bool] = ..., scanned: _Optional[int] = ..., total: _Optional[int] = ..., copied: _Optional[int] = ..., skipped: _Optional[int] = ..., removed: _Optional[int] = ..., error: _Optional[str] = ..., started_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...
