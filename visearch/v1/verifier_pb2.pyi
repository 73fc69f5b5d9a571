from visearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RerankCandidate(_message.Message):
    __slots__ = ("id", "sha256", "global_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    sha256: str
    global_score: float
    def __init__(self, id: _Optional[str] = ..., sha256: _Optional[str] = ..., global_score: _Optional[float] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("query", "candidates", "mode")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.LocalFeatures
    candidates: _containers.RepeatedCompositeFieldContainer[RerankCandidate]
    mode: _common_pb2.RerankMode
    def __init__(self, query: _Optional[_Union[_common_pb2.LocalFeatures, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[RerankCandidate, _Mapping]]] = ..., mode: _Optional[_Union[_common_pb2.RerankMode, str]] = ...) -> None: ...

class RerankedCandidate(_message.Message):
    __slots__ = ("id", "score", "global_score", "inliers", "matches", "inlier_ratio", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    INLIERS_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    INLIER_RATIO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    global_score: float
    inliers: int
    matches: int
    inlier_ratio: float
    reason: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., global_score: _Optional[float] = ..., inliers: _Optional[int] = ..., matches: _Optional[int] = ..., inlier_ratio: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[RerankedCandidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[RerankedCandidate, _Mapping]]] = ...) -> None: ...
