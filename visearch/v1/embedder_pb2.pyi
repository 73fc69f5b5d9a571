from visearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExtractRequest(_message.Message):
    __slots__ = ("images", "model_version", "feature_type", "max_features", "texture")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_FEATURES_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    model_version: str
    feature_type: str
    max_features: int
    texture: bool
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., model_version: _Optional[str] = ..., feature_type: _Optional[str] = ..., max_features: _Optional[int] = ..., texture: _Optional[bool] = ...) -> None: ...

class ExtractResponse(_message.Message):
    __slots__ = ("embeddings", "dims", "model_version", "features", "histograms", "texture_type")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    dims: int
    model_version: str
    features: _containers.RepeatedCompositeFieldContainer[_common_pb2.LocalFeatures]
    histograms: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    texture_type: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., dims: _Optional[int] = ..., model_version: _Optional[str] = ..., features: _Optional[_Iterable[_Union[_common_pb2.LocalFeatures, _Mapping]]] = ..., histograms: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., texture_type: _Optional[str] = ...) -> None: ...

class ExtractTextureRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ExtractTextureResponse(_message.Message):
    __slots__ = ("histograms", "texture_type")
    HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    histograms: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    texture_type: str
    def __init__(self, histograms: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., texture_type: _Optional[str] = ...) -> None: ...

class EmbedGlobalRequest(_message.Message):
    __slots__ = ("images", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    model_version: str
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EmbedGlobalResponse(_message.Message):
    __slots__ = ("embeddings", "dims", "model_version")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    dims: int
    model_version: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., dims: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class ExtractLocalRequest(_message.Message):
    __slots__ = ("images", "feature_type", "max_features", "rotations")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    feature_type: str
    max_features: int
    rotations: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., feature_type: _Optional[str] = ..., max_features: _Optional[int] = ..., rotations: _Optional[_Iterable[float]] = ...) -> None: ...

class ExtractLocalResponse(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[_common_pb2.LocalFeatures]
    def __init__(self, features: _Optional[_Iterable[_Union[_common_pb2.LocalFeatures, _Mapping]]] = ...) -> None: ...

class EmbedderStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EmbedderStatsResponse(_message.Message):
    __slots__ = ("model_version", "dims", "providers", "images_embedded", "loaded_versions", "images_by_version")
    class ImagesByVersionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_BY_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    dims: int
    providers: _containers.RepeatedScalarFieldContainer[str]
    images_embedded: int
    loaded_versions: _containers.RepeatedScalarFieldContainer[str]
    images_by_version: _containers.ScalarMap[str, int]
    def __init__(self, model_version: _Optional[str] = ..., dims: _Optional[int] = ..., providers: _Optional[_Iterable[str]] = ..., images_embedded: _Optional[int] = ..., loaded_versions: _Optional[_Iterable[str]] = ..., images_by_version: _Optional[_Mapping[str, int]] = ...) -> None: ...
