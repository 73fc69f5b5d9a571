"""The embedder core on the real exported ONNX model (built once per session)."""

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from services.common.errors import InvalidArgumentError
from services.common.imaging import ImageLimits
from services.common.model_registry import load_local
from services.embedder.core import BatchingSettings, EmbedderCore, GlobalModel, create_session


@pytest.fixture(scope="module")
def core(built_model_dir):
    manifest, path = load_local(built_model_dir)
    session = create_session(path, ["CUDAExecutionProvider", "CPUExecutionProvider"], threads=0)
    embedder = EmbedderCore(
        GlobalModel(manifest, session),
        ImageLimits(max_bytes=5_000_000),
        BatchingSettings(max_batch=4, max_wait_ms=2.0),
        max_local_features=500,
    )
    yield embedder
    embedder.close()


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_embeddings_are_unit_vectors_of_the_manifest_dims(core):
    images = [jpeg(skimage_data.astronaut()), jpeg(skimage_data.coffee())]
    vectors = core.embed_global(images)
    assert vectors.shape == (2, core.dims) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert core.model.providers[-1] == "CPUExecutionProvider"


def test_same_object_is_closer_than_another_object(core):
    coffee = skimage_data.coffee()
    variant = np.ascontiguousarray(coffee[20:-20, 30:-30])
    a, b, c = core.embed_global(
        [jpeg(coffee), jpeg(variant, quality=40), jpeg(skimage_data.rocket())]
    )
    assert float(a @ b) > float(a @ c) + 0.1


def test_batched_and_single_runs_agree(core):
    images = [
        jpeg(skimage_data.chelsea()),
        jpeg(skimage_data.astronaut()),
        jpeg(skimage_data.coffee()),
    ]
    together = core.embed_global(images)
    alone = np.concatenate([core.embed_global([image]) for image in images])
    assert np.allclose(together, alone, atol=1e-4)


def test_bad_image_is_named_by_position(core):
    with pytest.raises(InvalidArgumentError, match="image 1: image bytes cannot be decoded"):
        core.embed_global([jpeg(skimage_data.coffee()), b"garbage"])
    with pytest.raises(InvalidArgumentError, match="no images"):
        core.embed_global([])


def test_local_features_in_original_pixels(core):
    (features,) = core.extract_local([jpeg(skimage_data.coffee())], "rootsift", 0)
    assert 50 < features.count <= 500
    assert features.descriptors.shape == (features.count, 128)
    assert (features.image_width, features.image_height) == (600, 400)
    assert features.keypoints[:, 0].max() < 600 and features.keypoints[:, 1].max() < 400
    with pytest.raises(InvalidArgumentError, match="not supported"):
        core.extract_local([jpeg(skimage_data.coffee())], "surf", 0)


def test_extract_decodes_each_image_once_and_matches_the_separate_calls(core, monkeypatch):
    import services.embedder.core as core_module
    from services.embedder.texture import TEXTURE_TYPE

    images = [
        jpeg(skimage_data.chelsea()),
        jpeg(skimage_data.astronaut()),
        jpeg(skimage_data.coffee()),
    ]
    vectors = core.embed_global(images)
    features = core.extract_local(images, "rootsift", 0)
    textures, _ = core.extract_texture(images)
    decodes = []
    real_decode = core_module.decode_rgb

    def counting_decode(data, limits):
        decodes.append(data)
        return real_decode(data, limits)

    monkeypatch.setattr(core_module, "decode_rgb", counting_decode)
    extracted = core.extract(images, "", "rootsift", 0, texture=True, timeout=60)
    assert sorted(decodes) == sorted(images)  # one decode per image, for all three outputs
    assert np.allclose(extracted.vectors, vectors, atol=1e-4)
    assert [f.count for f in extracted.features] == [f.count for f in features]
    for got, want in zip(extracted.features, features, strict=True):
        assert np.allclose(got.descriptors, want.descriptors, atol=1e-5)
    assert extracted.texture_type == TEXTURE_TYPE
    assert extracted.textures is not None
    for got, want in zip(extracted.textures, textures, strict=True):
        assert np.allclose(got, want)
    plain = core.extract(images[:1], "", "none", 0)
    assert plain.features == [] and plain.textures is None and plain.texture_type == ""
    with pytest.raises(InvalidArgumentError, match="image 1: image bytes cannot be decoded"):
        core.extract([images[0], b"garbage"], "", "rootsift", 0)
    with pytest.raises(InvalidArgumentError, match="not supported"):
        core.extract(images[:1], "", "surf", 0)
