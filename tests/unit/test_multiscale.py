"""Multi-scale global model: build, manifest, the embedder's feeds, refusal to fine-tune."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from services.common.model_registry import load_local, scale_input_name  # noqa: E402
from services.embedder.core import GlobalModel, resize_batch  # noqa: E402
from services.models import build as build_mod  # noqa: E402
from services.models.export import ExportError, photo_like_batch  # noqa: E402
from services.models.global_model import GlobalEmbeddingModel  # noqa: E402
from services.models.recipes import (  # noqa: E402
    MOBILENETV2_GEM,
    MOBILENETV2_GEM_MULTISCALE,
    recipe_for_manifest,
)
from services.models.weights import ensure_weights  # noqa: E402
from services.training.torch_backbone import check_backbone  # noqa: E402

RECIPE = MOBILENETV2_GEM_MULTISCALE


@pytest.fixture(scope="module")
def multiscale(models_dir):
    model_dir, _, _ = build_mod.build(models_dir, recipe=RECIPE)
    manifest, path = load_local(model_dir)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model_dir, GlobalModel(manifest, session)


def test_manifest_and_onnx_inputs_name_every_scale(multiscale) -> None:
    model_dir, model = multiscale
    manifest = model.manifest
    assert manifest.version == RECIPE.base_version
    assert manifest.input_size == RECIPE.input_size
    assert manifest.extra_scales == RECIPE.extra_scales
    assert all(h < RECIPE.input_size[0] for h, _ in RECIPE.extra_scales)
    session = ort.InferenceSession(
        str(model_dir / build_mod.MODEL_FILENAME), providers=["CPUExecutionProvider"]
    )
    shapes = {i.name: i.shape[1:] for i in session.get_inputs()}
    want = {manifest.input_name: [3, *RECIPE.input_size]}
    for size in RECIPE.extra_scales:
        want[scale_input_name(manifest.input_name, size)] = [3, *size]
    assert shapes == want


def test_embedder_output_is_the_normalised_sum_over_scales(multiscale) -> None:
    """The embedder resizes the preprocessed batch to each extra scale itself; the result must
    be what the torch model gives on those same resized batches."""
    _, model = multiscale
    batch = photo_like_batch(2, RECIPE.input_size, seed=5)
    got = model.run(batch)
    torch_model = GlobalEmbeddingModel.from_recipe(RECIPE, ensure_weights(RECIPE.weights))
    scaled = [batch] + [resize_batch(batch, size) for size in RECIPE.extra_scales]
    with torch.no_grad():
        per_scale = [torch_model(torch.from_numpy(x)).numpy() for x in scaled]
    total = np.sum(per_scale, axis=0)
    want = total / np.linalg.norm(total, axis=1, keepdims=True)
    assert got.shape == (2, RECIPE.output_dims) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4
    # every scale counts: dropping the smallest changes the embedding
    partial = np.sum(per_scale[:-1], axis=0)
    partial /= np.linalg.norm(partial, axis=1, keepdims=True)
    assert np.abs(got - partial).max() > 1e-3


def test_resize_batch_shapes_and_values() -> None:
    batch = (
        np.ones((3, 3, 40, 40), np.float32) * np.arange(3, dtype=np.float32)[None, :, None, None]
    )
    out = resize_batch(batch, (20, 30))
    assert out.shape == (3, 3, 20, 30) and out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_allclose(out[:, 2], 2.0)


def test_single_and_multi_scale_manifests_map_to_their_own_recipe(multiscale, models_dir) -> None:
    model_dir, model = multiscale
    assert recipe_for_manifest(model.manifest.raw) is RECIPE
    single = json.loads(
        (models_dir / "global" / MOBILENETV2_GEM.base_version / "manifest.json").read_text()
    )
    assert recipe_for_manifest(single) is MOBILENETV2_GEM
    with pytest.raises(ExportError, match="several scales"):
        check_backbone(model.manifest)


def test_up_to_date_checks_the_scales(multiscale) -> None:
    model_dir, model = multiscale
    version, size = RECIPE.base_version, RECIPE.input_size
    assert build_mod.up_to_date(model_dir, version, size, RECIPE.extra_scales) is not None
    assert build_mod.up_to_date(model_dir, version, size, ((288, 288),)) is None
    assert build_mod.up_to_date(model_dir, version, size) is None
