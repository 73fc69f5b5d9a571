from visearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RerankCandidate(_message.Message):
    __slots__ = ("id", "sha256", "global_score", "label")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    sha256: str
    global_score: float
    label: str
    def __init__(self, id: _Optional[str] = ..., sha256: _Optional[str] = ..., global_score: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("query", "candidates", "mode", "query_texture", "return_matches", "query_sha256", "texture_type")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    QUERY_TEXTURE_FIELD_NUMBER: _ClassVar[int]
    RETURN_MATCHES_FIELD_NUMBER: _ClassVar[int]
    QUERY_SHA256_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.LocalFeatures
    candidates: _containers.RepeatedCompositeFieldContainer[RerankCandidate]
    mode: _common_pb2.RerankMode
    query_texture: _common_pb2.Vector
    return_matches: bool
    query_sha256: str
    texture_type: str
    def __init__(self, query: _Optional[_Union[_common_pb2.LocalFeatures, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[RerankCandidate, _Mapping]]] = ..., mode: _Optional[_Union[_common_pb2.RerankMode, str]] = ..., query_texture: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., return_matches: _Optional[bool] = ..., query_sha256: _Optional[str] = ..., texture_type: _Optional[str] = ...) -> None: ...

class RerankedCandidate(_message.Message):
    __slots__ = ("id", "score", "global_score", "inliers", "matches", "inlier_ratio", "reason", "predicted_label", "label_margin", "inlier_keypoints")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    INLIERS_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    INLIER_RATIO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_MARGIN_FIELD_NUMBER: _ClassVar[int]
    INLIER_KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    global_score: float
    inliers: int
    matches: int
    inlier_ratio: float
    reason: str
    predicted_label: str
    label_margin: float
    inlier_keypoints: bytes
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., global_score: _Optional[float] = ..., inliers: _Optional[int] = ..., matches: _Optional[int] = ..., inlier_ratio: _Optional[float] = ..., reason: _Optional[str] = ..., predicted_label: _Optional[str] = ..., label_margin: _Optional[float] = ..., inlier_keypoints: _Optional[bytes] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[RerankedCandidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[RerankedCandidate, _Mapping]]] = ...) -> None: ...
