"""Global embedding model: torchvision-compatible weights, ONNX export, manifest, build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from services.common.model_registry import sha256_file  # noqa: E402
from services.models import build as build_mod  # noqa: E402
from services.models.export import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_NAME,
    OUTPUT_NAME,
    photo_like_batch,
)
from services.models.global_model import GlobalEmbeddingModel  # noqa: E402
from services.models.mobilenet_v2 import STRIDE16_END, MobileNetV2  # noqa: E402
from services.models.weights import (  # noqa: E402
    WEIGHTS_SHA256,
    WeightsError,
    ensure_mobilenet_v2_weights,
)

INPUT_SIZE = build_mod.DEFAULT_INPUT_SIZE


@pytest.fixture(scope="module")
def weights_path() -> Path:
    try:
        return ensure_mobilenet_v2_weights()  # shared cache: ~/.cache/visearch/weights
    except WeightsError as exc:
        pytest.skip(f"MobileNetV2 weights unavailable: {exc}")


@pytest.fixture(scope="module")
def built(tmp_path_factory, weights_path):
    out = tmp_path_factory.mktemp("models")
    model_dir, manifest, did_build = build_mod.build(out, weights_cache=weights_path.parent)
    assert did_build
    return out, model_dir, manifest


@pytest.fixture(scope="module")
def torch_model(weights_path) -> GlobalEmbeddingModel:
    return GlobalEmbeddingModel.from_weights(weights_path)


@pytest.fixture(scope="module")
def session(built):
    _, model_dir, _ = built
    return ort.InferenceSession(
        str(model_dir / build_mod.MODEL_FILENAME), providers=["CPUExecutionProvider"]
    )


def test_weights_file_is_verified(weights_path):
    assert weights_path.name == "mobilenet_v2-b0353104.pth"
    assert sha256_file(weights_path) == WEIGHTS_SHA256


def test_state_dict_keys_match_torchvision_and_load_strict(weights_path):
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    assert list(model.state_dict().keys()) == list(state.keys())
    for key in ("features.0.0.weight", "features.1.conv.0.0.weight", "features.18.0.weight"):
        assert key in state
    assert tuple(state["classifier.1.weight"].shape) == (1000, 1280)
    model.load_state_dict(state, strict=True)


def test_forward_features_shapes(torch_model):
    x = torch.zeros(1, 3, 224, 320)
    with torch.no_grad():
        final = torch_model.backbone.forward_features(x)
        stride16 = torch_model.backbone.forward_features(x, upto=STRIDE16_END)
    assert tuple(final.shape) == (1, 1280, 7, 10)
    assert tuple(stride16.shape) == (1, 96, 14, 20)


def test_onnx_matches_torch_batch2(session, torch_model):
    x = photo_like_batch(2, INPUT_SIZE, seed=123)
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    with torch.no_grad():
        want = torch_model(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 1280)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert not np.allclose(got[0], got[1], atol=1e-3)  # distinct images, distinct vectors


def test_outputs_are_l2_normalised(session):
    rng = np.random.default_rng(7)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, *INPUT_SIZE), dtype=np.float32)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_manifest_fields_and_sha256(built, session):
    _, model_dir, manifest = built
    on_disk = json.loads((model_dir / build_mod.MANIFEST_FILENAME).read_text())
    assert on_disk == manifest
    assert model_dir.name == manifest["version"] == build_mod.BASE_VERSION
    assert model_dir.parent.name == "global"
    assert manifest["name"] == "mobilenetv2-gem"
    assert manifest["kind"] == "global"
    assert manifest["sha256"] == sha256_file(model_dir / build_mod.MODEL_FILENAME)
    assert manifest["input_name"] == "images"
    assert manifest["output_name"] == "embeddings"
    assert manifest["input_size"] == list(INPUT_SIZE)
    assert manifest["mean"] == list(IMAGENET_MEAN) == [0.485, 0.456, 0.406]
    assert manifest["std"] == list(IMAGENET_STD) == [0.229, 0.224, 0.225]
    assert manifest["output_dims"] == 1280
    assert manifest["pooling"] == {"type": "gem", "p": 3.0}
    assert manifest["weights_sha256"] == WEIGHTS_SHA256
    assert manifest["parent_version"] is None
    assert manifest["created_by"] == "services.models.build"
    (inp,) = session.get_inputs()
    (outp,) = session.get_outputs()
    assert inp.name == manifest["input_name"]
    assert outp.name == manifest["output_name"]
    assert isinstance(inp.shape[0], str)  # dynamic batch axis
    assert inp.shape[1:] == [3, *manifest["input_size"]]


def test_build_is_idempotent(built, capsys):
    out, model_dir, manifest = built
    onnx_path = model_dir / build_mod.MODEL_FILENAME
    mtime = onnx_path.stat().st_mtime_ns
    again_dir, again, did_build = build_mod.build(out)
    assert (again_dir, again, did_build) == (model_dir, manifest, False)
    assert build_mod.main(["--out", str(out), "--no-local", "--model", "mobilenetv2-gem"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert onnx_path.stat().st_mtime_ns == mtime


def test_up_to_date_detects_changes(built, tmp_path):
    _, model_dir, _ = built
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (build_mod.MODEL_FILENAME, build_mod.MANIFEST_FILENAME):
        (copy / name).write_bytes((model_dir / name).read_bytes())
    version = build_mod.BASE_VERSION
    assert build_mod.up_to_date(copy, version, INPUT_SIZE) is not None
    assert build_mod.up_to_date(copy, version, (224, 224)) is None
    with (copy / build_mod.MODEL_FILENAME).open("ab") as f:
        f.write(b"\0")
    assert build_mod.up_to_date(copy, version, INPUT_SIZE) is None
