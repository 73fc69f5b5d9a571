"""Conversions between protobuf messages and numpy/domain types, shared by servicers and clients."""

from __future__ import annotations

import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.index_types import IndexOverrides
from services.common.local_features import LocalFeatures
from visearch.v1 import common_pb2

RERANK_MODE_NAMES = {
    common_pb2.RERANK_MODE_UNSPECIFIED: "",
    common_pb2.RERANK_MODE_NONE: "none",
    common_pb2.RERANK_MODE_GEOMETRIC: "geometric",
    common_pb2.RERANK_MODE_TEXTURE: "texture",
}
RERANK_MODES_BY_NAME = {name: mode for mode, name in RERANK_MODE_NAMES.items()}


def vector_to_proto(vector: np.ndarray) -> common_pb2.Vector:
    """float32 [d] -> a Vector with `packed` set (float32 little-endian bytes)."""
    return common_pb2.Vector(packed=np.ascontiguousarray(vector, dtype="<f4").tobytes())


def vectors_to_proto(vectors: np.ndarray) -> list[common_pb2.Vector]:
    """float32 [n, d] -> n Vector messages, each with `packed` set (one bytes copy per row;
    no per-value Python floats)."""
    matrix = np.ascontiguousarray(vectors, dtype="<f4")
    if matrix.ndim != 2:
        raise InvalidArgumentError(f"expected a [n, d] matrix, got shape {matrix.shape}")
    data = matrix.tobytes()
    row = matrix.shape[1] * 4
    return [common_pb2.Vector(packed=data[i * row : (i + 1) * row]) for i in range(len(matrix))]


def vector_from_proto(message: common_pb2.Vector) -> np.ndarray:
    """A Vector -> float32 [d]: `packed` when set, else the old repeated `values` (accepted
    for one release, from writers that predate `packed`)."""
    if message.packed:
        if len(message.packed) % 4:
            raise InvalidArgumentError(
                f"a packed vector has {len(message.packed)} bytes, not a multiple of 4"
            )
        return np.frombuffer(message.packed, dtype="<f4").astype(np.float32)
    return np.asarray(message.values, dtype=np.float32)


def vectors_from_proto(messages: list[common_pb2.Vector] | object) -> np.ndarray:
    """Vector messages (either field) -> float32 [n, d]; all must share one dimension."""
    rows = [vector_from_proto(message) for message in messages]  # type: ignore[attr-defined]
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    dims = {row.shape[0] for row in rows}
    if len(dims) != 1 or 0 in dims:
        raise InvalidArgumentError(f"vectors must share one non-zero dimension, got {sorted(dims)}")
    return np.stack(rows)


def local_features_to_proto(features: LocalFeatures) -> common_pb2.LocalFeatures:
    return common_pb2.LocalFeatures(
        feature_type=features.feature_type,
        count=features.count,
        dims=features.dims,
        keypoints=np.ascontiguousarray(features.keypoints, dtype="<f4").tobytes(),
        scores=np.ascontiguousarray(features.scores, dtype="<f4").tobytes(),
        descriptors=np.ascontiguousarray(features.descriptors, dtype="<f4").tobytes(),
        image_width=features.image_width,
        image_height=features.image_height,
        group_sizes=list(features.group_sizes),
        rotations=list(features.rotations),
        model_version=features.model_version,
    )


def local_features_from_proto(message: common_pb2.LocalFeatures) -> LocalFeatures:
    n, d = message.count, message.dims
    try:
        keypoints = np.frombuffer(message.keypoints, dtype="<f4").reshape(n, 2)
        scores = np.frombuffer(message.scores, dtype="<f4").reshape(n)
        descriptors = np.frombuffer(message.descriptors, dtype="<f4").reshape(n, d)
    except ValueError as exc:
        raise InvalidArgumentError(
            f"local features do not match their declared shape [{n}, {d}]: {exc}"
        ) from exc
    return LocalFeatures(
        feature_type=message.feature_type,
        keypoints=keypoints.astype(np.float32),
        scores=scores.astype(np.float32),
        descriptors=descriptors.astype(np.float32),
        image_width=message.image_width,
        image_height=message.image_height,
        group_sizes=tuple(message.group_sizes),
        rotations=tuple(message.rotations),
        model_version=message.model_version,
    )


def metadata_to_proto(label: str, attributes: dict[str, str]) -> common_pb2.ItemMetadata:
    return common_pb2.ItemMetadata(label=label, attributes=attributes)


def filter_to_proto(label: str, attributes: dict[str, str]) -> common_pb2.Filter:
    return common_pb2.Filter(label=label, attributes=attributes)


def index_params_to_proto(overrides: IndexOverrides) -> common_pb2.IndexParams:
    return common_pb2.IndexParams(
        exact_threshold=overrides.exact_threshold,
        num_leaves=overrides.num_leaves,
        leaves_to_search=overrides.leaves_to_search,
        reorder=overrides.reorder,
    )


def index_params_from_proto(message: common_pb2.IndexParams) -> IndexOverrides:
    return IndexOverrides(
        exact_threshold=message.exact_threshold,
        num_leaves=message.num_leaves,
        leaves_to_search=message.leaves_to_search,
        reorder=message.reorder,
    )
