from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RerankMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RERANK_MODE_UNSPECIFIED: _ClassVar[RerankMode]
    RERANK_MODE_NONE: _ClassVar[RerankMode]
    RERANK_MODE_GEOMETRIC: _ClassVar[RerankMode]
    RERANK_MODE_TEXTURE: _ClassVar[RerankMode]
RERANK_MODE_UNSPECIFIED: RerankMode
RERANK_MODE_NONE: RerankMode
RERANK_MODE_GEOMETRIC: RerankMode
RERANK_MODE_TEXTURE: RerankMode

class Image(_message.Message):
    __slots__ = ("data", "object_key")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    object_key: str
    def __init__(self, data: _Optional[bytes] = ..., object_key: _Optional[str] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values", "packed")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    packed: bytes
    def __init__(self, values: _Optional[_Iterable[float]] = ..., packed: _Optional[bytes] = ...) -> None: ...

class LocalFeatures(_message.Message):
    __slots__ = ("feature_type", "count", "dims", "keypoints", "scores", "descriptors", "image_width", "image_height", "group_sizes", "rotations", "model_version")
    FEATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZES_FIELD_NUMBER: _ClassVar[int]
    ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    feature_type: str
    count: int
    dims: int
    keypoints: bytes
    scores: bytes
    descriptors: bytes
    image_width: int
    image_height: int
    group_sizes: _containers.RepeatedScalarFieldContainer[int]
    rotations: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    def __init__(self, feature_type: _Optional[str] = ..., count: _Optional[int] = ..., dims: _Optional[int] = ..., keypoints: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., descriptors: _Optional[bytes] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., group_sizes: _Optional[_Iterable[int]] = ..., rotations: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ItemMetadata(_message.Message):
    __slots__ = ("label", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    label: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, label: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("label", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    label: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, label: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class IndexParams(_message.Message):
    __slots__ = ("exact_threshold", "num_leaves", "leaves_to_search", "reorder")
    EXACT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NUM_LEAVES_FIELD_NUMBER: _ClassVar[int]
    LEAVES_TO_SEARCH_FIELD_NUMBER: _ClassVar[int]
    REORDER_FIELD_NUMBER: _ClassVar[int]
    exact_threshold: int
    num_leaves: int
    leaves_to_search: int
    reorder: int
    def __init__(self, exact_threshold: _Optional[int] = ..., num_leaves: _Optional[int] = ..., leaves_to_search: _Optional[int] = ..., reorder: _Optional[int] = ...) -> None: ...
