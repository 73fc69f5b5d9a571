"""LocalFeatures: validation, .npz round trip, corrupt data, storage keys."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from services.common.errors import InvalidArgumentError
from services.common.local_features import LocalFeatures, feature_key
from services.common.proto_convert import local_features_from_proto, local_features_to_proto


def make_features(count: int = 5, dims: int = 128, seed: int = 0) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures(
        feature_type="rootsift",
        keypoints=rng.uniform(0, 500, size=(count, 2)).astype(np.float32),
        scores=rng.uniform(0, 1, size=count).astype(np.float32),
        descriptors=rng.uniform(0, 1, size=(count, dims)).astype(np.float32),
        image_width=640,
        image_height=480,
    )


def test_count_dims_and_nbytes():
    features = make_features(count=7, dims=64)
    assert features.count == 7
    assert features.dims == 64
    assert features.nbytes == 7 * 2 * 4 + 7 * 4 + 7 * 64 * 4


def test_npz_round_trip_is_exact():
    features = make_features()
    restored = LocalFeatures.from_npz(features.to_npz())
    assert restored.feature_type == "rootsift"
    assert (restored.image_width, restored.image_height) == (640, 480)
    for name in ("keypoints", "scores", "descriptors"):
        original, loaded = getattr(features, name), getattr(restored, name)
        assert loaded.dtype == np.float32
        np.testing.assert_array_equal(loaded, original)


def test_empty_features_round_trip():
    features = make_features(count=0)
    restored = LocalFeatures.from_npz(features.to_npz())
    assert restored.count == 0
    assert restored.keypoints.shape == (0, 2)
    assert restored.descriptors.shape == (0, 128)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_older_and_compressed_archives_are_read_too(save):
    """Compressed archives, and archives written before model versions were stored (read
    as version "")."""
    features = make_features()
    buffer = io.BytesIO()
    save(
        buffer,
        feature_type=np.array("rootsift"),
        keypoints=features.keypoints,
        scores=features.scores,
        descriptors=features.descriptors,
        image_size=np.array([640, 480]),
    )
    restored = LocalFeatures.from_npz(buffer.getvalue())
    np.testing.assert_array_equal(restored.descriptors, features.descriptors)
    assert restored.model_version == ""


@pytest.mark.parametrize(
    "data",
    [b"", b"not an npz archive", make_features().to_npz()[:200], make_features().to_npz()[:-50]],
    ids=["empty", "garbage", "head", "truncated"],
)
def test_corrupt_bytes_raise_invalid_argument(data: bytes):
    with pytest.raises(InvalidArgumentError):
        LocalFeatures.from_npz(data)


def test_missing_field_or_wrong_shape_raises_invalid_argument():
    features = make_features()
    missing = io.BytesIO()
    np.savez(missing, keypoints=features.keypoints, scores=features.scores)
    with pytest.raises(InvalidArgumentError, match="lacks"):
        LocalFeatures.from_npz(missing.getvalue())

    wrong = io.BytesIO()
    np.savez(
        wrong,
        feature_type=np.array("rootsift"),
        keypoints=features.keypoints,
        scores=features.scores[:3],
        descriptors=features.descriptors,
        image_size=np.array([640, 480]),
    )
    with pytest.raises(InvalidArgumentError, match="scores"):
        LocalFeatures.from_npz(wrong.getvalue())


def test_pickled_objects_are_refused():
    features = make_features()
    buffer = io.BytesIO()
    np.savez(
        buffer,
        feature_type=np.array([{"a": 1}], dtype=object),
        keypoints=features.keypoints,
        scores=features.scores,
        descriptors=features.descriptors,
        image_size=np.array([640, 480]),
    )
    with pytest.raises(InvalidArgumentError, match="corrupt"):
        LocalFeatures.from_npz(buffer.getvalue())


def test_constructor_validates_shapes():
    features = make_features()
    with pytest.raises(InvalidArgumentError):
        LocalFeatures(
            "rootsift", features.keypoints[:, :1], features.scores, features.descriptors, 640, 480
        )
    with pytest.raises(InvalidArgumentError):
        LocalFeatures(
            "rootsift", features.keypoints, features.scores, features.descriptors[:2], 640, 480
        )
    with pytest.raises(InvalidArgumentError):
        LocalFeatures("rootsift", features.keypoints, features.scores, features.descriptors, 0, 480)


def test_feature_key():
    assert feature_key("rootsift", "ab12") == "features/rootsift/ab12.npz"
    assert feature_key("delg", "ff", bucket="feat") == "feat/delg/ff.npz"
    assert feature_key("delf", "ff", model_version="delf-v2") == "features/delf/delf-v2/ff.npz"


def test_model_version_survives_npz_and_the_wire():
    features = replace(make_features(), model_version="delf-mobilenetv2-v2")
    assert LocalFeatures.from_npz(features.to_npz()).model_version == "delf-mobilenetv2-v2"
    wire = local_features_from_proto(local_features_to_proto(features))
    assert wire.model_version == "delf-mobilenetv2-v2"
    assert LocalFeatures.from_npz(make_features().to_npz()).model_version == ""
    with pytest.raises(InvalidArgumentError, match="model version"):
        replace(make_features(), model_version="../images/x")  # never a path in a storage key
