"""The embedder core serving DELF-style features (real ONNX models), and their wire form."""

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.common.imaging import ImageLimits
from services.common.model_registry import load_local
from services.common.proto_convert import local_features_from_proto, local_features_to_proto
from services.embedder.core import (
    BatchingSettings,
    EmbedderCore,
    GlobalModel,
    create_session,
    delf_from_session,
)


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cores(built_model_dir, models_dir):
    local = sorted((models_dir / "local").glob("*/manifest.json"))
    if not local:
        pytest.skip("no DELF local model (make models builds it when ukbench1000 is present)")
    manifest, path = load_local(built_model_dir)
    local_manifest, local_path = load_local(local[-1].parent)
    made = []
    for delf in (delf_from_session(local_manifest, create_session(local_path, [], 2)), None):
        made.append(
            EmbedderCore(
                GlobalModel(manifest, create_session(path, [], 2)),
                ImageLimits(max_bytes=5_000_000),
                BatchingSettings(max_batch=2, max_wait_ms=1.0),
                max_local_features=300,
                delf=delf,
                max_delf_features=200,
            )
        )
    yield made
    for core in made:
        core.close()


def test_delf_features_per_rotation_group(cores):
    with_delf, _ = cores
    image = skimage_data.coffee()  # 400 x 600
    (upright,) = with_delf.extract_local([jpeg(image)], "delf", 0)
    assert upright.feature_type == "delf" and upright.count == 200 and upright.dims == 40
    assert upright.model_version.startswith("delf-mobilenetv2-")  # part of its storage key
    assert upright.group_sizes == () and upright.rotations == ()
    assert np.all(upright.keypoints >= 0) and np.all(upright.keypoints < [600, 400])
    (turned,) = with_delf.extract_local([jpeg(image)], "delf", 100, rotations=(0.0, 90.0, 180.0))
    assert turned.group_sizes == (100, 100, 100) and turned.rotations == (0.0, 90.0, 180.0)
    assert np.all(turned.keypoints >= 0) and np.all(turned.keypoints < [600, 400])
    wire = local_features_from_proto(local_features_to_proto(turned))
    assert wire.group_sizes == turned.group_sizes and wire.rotations == turned.rotations
    np.testing.assert_array_equal(wire.descriptors, turned.descriptors)


def test_rootsift_still_served_and_delf_needs_its_model(cores):
    with_delf, without = cores
    (sift,) = with_delf.extract_local([jpeg(skimage_data.astronaut())], "", 0)
    assert sift.feature_type == "rootsift" and sift.dims == 128
    with pytest.raises(FailedPreconditionError, match="DELF"):
        without.extract_local([jpeg(skimage_data.astronaut())], "delf", 0)
    with pytest.raises(InvalidArgumentError, match="rotations"):
        with_delf.extract_local([jpeg(skimage_data.astronaut())], "delf", 0, rotations=(0.0,) * 9)
