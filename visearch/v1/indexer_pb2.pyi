from visearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DropCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: int
    def __init__(self, dropped: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("collection", "page_token", "limit", "moved_under_shards", "ids_only")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MOVED_UNDER_SHARDS_FIELD_NUMBER: _ClassVar[int]
    IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_token: str
    limit: int
    moved_under_shards: int
    ids_only: bool
    def __init__(self, collection: _Optional[str] = ..., page_token: _Optional[str] = ..., limit: _Optional[int] = ..., moved_under_shards: _Optional[int] = ..., ids_only: _Optional[bool] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("ids", "vectors", "metadata", "next_page_token", "scanned", "size")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SCANNED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    vectors: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    metadata: _containers.RepeatedCompositeFieldContainer[_common_pb2.ItemMetadata]
    next_page_token: str
    scanned: int
    size: int
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., vectors: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., metadata: _Optional[_Iterable[_Union[_common_pb2.ItemMetadata, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., scanned: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class ClearTombstonesRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ClearTombstonesResponse(_message.Message):
    __slots__ = ("cleared",)
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    cleared: int
    def __init__(self, cleared: _Optional[int] = ...) -> None: ...

class SetCopyFenceRequest(_message.Message):
    __slots__ = ("collection", "run_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    run_id: str
    def __init__(self, collection: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class SetCopyFenceResponse(_message.Message):
    __slots__ = ("previous_run_id",)
    PREVIOUS_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    previous_run_id: str
    def __init__(self, previous_run_id: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("covered_seq",)
    class CoveredSeqEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COVERED_SEQ_FIELD_NUMBER: _ClassVar[int]
    covered_seq: _containers.ScalarMap[str, str]
    def __init__(self, covered_seq: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "ids", "vectors", "metadata", "params", "only_if_absent", "copy_fence")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ONLY_IF_ABSENT_FIELD_NUMBER: _ClassVar[int]
    COPY_FENCE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    vectors: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    metadata: _containers.RepeatedCompositeFieldContainer[_common_pb2.ItemMetadata]
    params: _common_pb2.IndexParams
    only_if_absent: bool
    copy_fence: str
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., vectors: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., metadata: _Optional[_Iterable[_Union[_common_pb2.ItemMetadata, _Mapping]]] = ..., params: _Optional[_Union[_common_pb2.IndexParams, _Mapping]] = ..., only_if_absent: _Optional[bool] = ..., copy_fence: _Optional[str] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "size")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    size: int
    def __init__(self, upserted: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class IndexDeleteRequest(_message.Message):
    __slots__ = ("collection", "ids", "tombstone")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    tombstone: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., tombstone: _Optional[bool] = ...) -> None: ...

class IndexDeleteResponse(_message.Message):
    __slots__ = ("deleted", "size")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    size: int
    def __init__(self, deleted: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class IndexSearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "k", "filter", "vectors_for_top")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FOR_TOP_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    k: int
    filter: _common_pb2.Filter
    vectors_for_top: int
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ..., vectors_for_top: _Optional[int] = ...) -> None: ...

class Neighbor(_message.Message):
    __slots__ = ("id", "score", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    vector: bytes
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., vector: _Optional[bytes] = ...) -> None: ...

class NeighborList(_message.Message):
    __slots__ = ("neighbors",)
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    neighbors: _containers.RepeatedCompositeFieldContainer[Neighbor]
    def __init__(self, neighbors: _Optional[_Iterable[_Union[Neighbor, _Mapping]]] = ...) -> None: ...

class IndexSearchResponse(_message.Message):
    __slots__ = ("results", "shard", "method")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[NeighborList]
    shard: int
    method: str
    def __init__(self, results: _Optional[_Iterable[_Union[NeighborList, _Mapping]]] = ..., shard: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...

class IndexStatsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CollectionIndexStats(_message.Message):
    __slots__ = ("collection", "size", "dims", "method", "applied_seq", "snapshot_seq")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SEQ_FIELD_NUMBER: _ClassVar[int]
    collection: str
    size: int
    dims: int
    method: str
    applied_seq: str
    snapshot_seq: str
    def __init__(self, collection: _Optional[str] = ..., size: _Optional[int] = ..., dims: _Optional[int] = ..., method: _Optional[str] = ..., applied_seq: _Optional[str] = ..., snapshot_seq: _Optional[str] = ...) -> None: ...

class IndexStatsResponse(_message.Message):
    __slots__ = ("shard", "collections")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    collections: _containers.RepeatedCompositeFieldContainer[CollectionIndexStats]
    def __init__(self, shard: _Optional[int] = ..., collections: _Optional[_Iterable[_Union[CollectionIndexStats, _Mapping]]] = ...) -> None: ...
