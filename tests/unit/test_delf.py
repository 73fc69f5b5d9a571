"""The DELF-style local model: ONNX vs the torch model it was exported from, keypoint geometry."""

from pathlib import Path

import numpy as np
import pytest
from skimage import data as skimage_data

from services.common.model_registry import load_local
from services.embedder.core import create_session, delf_from_session
from services.embedder.delf import (
    STRIDE,
    DelfExtractor,
    DelfSettings,
    PcaWhitening,
    rotate_image,
)
from services.models import delf_build

torch = pytest.importorskip("torch", reason="comparing with torch needs the [build] extra")

from services.models.delf import (  # noqa: E402
    FEATURE_CHANNELS,
    PCA_DIMS,
    AttentionHead,
    DelfLocalModel,
    torch_runner,
)
from services.models.mobilenet_v2 import STRIDE16_END, load_mobilenet_v2  # noqa: E402
from services.models.weights import ensure_mobilenet_v2_weights  # noqa: E402


@pytest.fixture(scope="module")
def local_model_dir(models_dir) -> Path:
    manifests = sorted((models_dir / "local").glob("*/manifest.json"))
    if not manifests:
        pytest.skip("no DELF local model: run `make models`")
    return manifests[-1].parent


@pytest.fixture(scope="module")
def extractors(local_model_dir) -> tuple[DelfExtractor, DelfExtractor]:
    """(ONNX Runtime extractor as served, torch extractor on the model it was exported from)."""
    manifest, path = load_local(local_model_dir)
    served = delf_from_session(manifest, create_session(path, ["CPUExecutionProvider"], 2))
    head = AttentionHead()
    with np.load(local_model_dir / delf_build.HEAD_FILENAME) as stored:
        head.load_state_dict({k: torch.from_numpy(stored[k]) for k in stored.files})
    model = DelfLocalModel(load_mobilenet_v2(ensure_mobilenet_v2_weights()), head).eval()
    reference = DelfExtractor(
        torch_runner(model),
        PcaWhitening.from_manifest(manifest.raw),
        DelfSettings.from_manifest(manifest.raw),
    )
    return served, reference


def test_onnx_features_match_the_torch_model(extractors):
    served, reference = extractors
    image = skimage_data.astronaut()[::2, ::2].copy()  # 256x256 RGB uint8
    got = served.extract(image, 300, rotations=(0.0, 90.0))
    want = reference.extract(image, 300, rotations=(0.0, 90.0))
    assert got.group_sizes == want.group_sizes and got.rotations == (0.0, 90.0)
    assert got.dims == want.dims == PCA_DIMS
    # Top-N selection may swap rows whose attention ties within float error: compare by place.
    got_rows = {tuple(np.round(xy, 2)): i for i, xy in enumerate(got.keypoints)}
    common = [(got_rows[tuple(np.round(xy, 2))], j) for j, xy in enumerate(want.keypoints)
              if tuple(np.round(xy, 2)) in got_rows]  # fmt: skip
    assert len(common) >= 0.98 * want.count
    g, w = np.array(common).T
    np.testing.assert_allclose(got.scores[g], want.scores[w], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got.descriptors[g], want.descriptors[w], atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(got.descriptors, axis=1), 1.0, atol=1e-5)


def test_keypoints_are_receptive_field_centres():
    """The input gradient of stride-16 cell (i, j) is centred within half a cell of pixel
    (16 j, 16 i), the analytic receptive-field centre the extractor uses for keypoints (the
    effective centre depends on the weights and the input: measured +5..7 px in x and -1..5 px
    in y on random inputs, so a keypoint is off by a third of a cell at most, never a cell)."""
    stages = load_mobilenet_v2(ensure_mobilenet_v2_weights()).features[:STRIDE16_END].eval()
    side, i, j = 512, 13, 18  # far enough from the borders that the gradient is not clipped
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    stages(x)[:, :, i, j].sum().backward()
    weight = x.grad.abs().sum(dim=(0, 1)).numpy()
    ys, xs = np.mgrid[0:side, 0:side]
    centre = ((weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum())
    np.testing.assert_allclose(centre, (STRIDE * j, STRIDE * i), atol=STRIDE / 2)


@pytest.mark.parametrize("angle", [90.0, 180.0, 270.0, 45.0])
def test_rotation_maps_back_to_original_pixels(angle):
    image = np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    rotated, back = rotate_image(image, angle)
    rng = np.random.default_rng(1)
    ys = rng.integers(0, rotated.shape[0], 200)
    xs = rng.integers(0, rotated.shape[1], 200)
    mapped = np.stack([xs, ys], axis=1) @ back[:, :2].T + back[:, 2]
    inside = np.all((mapped > 1) & (mapped < np.array([63, 39]) - 1), axis=1)
    assert inside.sum() > 50
    if angle % 90 == 0:
        ox, oy = np.round(mapped[inside]).astype(int).T
        np.testing.assert_array_equal(rotated[ys[inside], xs[inside]], image[oy, ox])
    else:  # bilinear: compare with the nearest original pixel loosely on a smooth image
        smooth = np.repeat(np.repeat(np.arange(0, 250, 25, dtype=np.uint8), 8)[None, :64], 40, 0)
        smooth3 = np.repeat(smooth[:, :, None], 3, axis=2)
        rotated, back = rotate_image(smooth3, angle)
        ox, oy = np.round(mapped[inside]).astype(int).T
        diff = np.abs(rotated[ys[inside], xs[inside], 0].astype(int) - smooth[oy, ox])
        assert np.median(diff) <= 25


def test_light_build_module_constants_agree_with_the_torch_modules():
    from services.models import delf, export, mobilenet_v2

    assert delf_build.FEATURE_CHANNELS == delf.FEATURE_CHANNELS
    assert delf_build.PCA_DIMS == delf.PCA_DIMS and delf_build.STRIDE == delf.STRIDE == STRIDE
    assert delf_build.STRIDE16_END == mobilenet_v2.STRIDE16_END and delf_build.OPSET == export.OPSET
    assert delf_build.IMAGENET_MEAN == export.IMAGENET_MEAN
    assert delf_build.IMAGENET_STD == export.IMAGENET_STD


def test_manifest_describes_the_served_model(local_model_dir):
    manifest, _ = load_local(local_model_dir)
    raw = manifest.raw
    assert manifest.kind == "local" and raw["feature_type"] == "delf"
    projection = np.asarray(raw["pca"]["projection"])
    assert raw["pca"]["method"] == "learned_whitening"
    assert projection.shape == (FEATURE_CHANNELS, manifest.output_dims)
    assert manifest.output_dims == PCA_DIMS
    assert len(raw["pca"]["mean"]) == FEATURE_CHANNELS
    assert raw["training"]["whitening_pairs"] > 10 * FEATURE_CHANNELS
    assert "scikit-image" in raw["training"]["data"]  # no dataset folder needed
    assert raw["training"]["attention_auc"] > 0.7  # the head learned which cells match
    assert delf_build.up_to_date(local_model_dir) is not None
