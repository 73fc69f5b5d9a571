"""Build the DELF-style local model: train attention, export ONNX, learn whitening, write manifest.

Produces ``<out>/local/<version>/model.onnx`` and ``manifest.json`` (the 40-d whitening lives in
the manifest, so the model registry publishes and fetches it with the version). Training data:
the images bundled with scikit-image and scikit-learn (``services.models.delf_synthetic``), so
every machine builds it (no dataset folder needed; no evaluation image is ever seen). Steps:
1. The frozen backbone with feature-norm attention: a first whitening from synthetic warped
   pairs of the norm-selected cells.
2. Matchability labels of every cell of synthetic view pairs (with that whitening); the
   attention head is trained to predict them (``delf.train_matchability``).
3. The final model (backbone + trained head) → ONNX, checked against torch; the final
   whitening from warped pairs of the cells its attention selects.
Deterministic (seeded) and about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from services.common.model_registry import sha256_file
from services.embedder.delf import (
    DEFAULT_BASE_SIDE,
    DEFAULT_MAX_SIDE,
    DEFAULT_MIN_SIDE,
    DEFAULT_SCALES,
    DelfExtractor,
    ScaleRunner,
)
from services.models.weights import WEIGHTS_SHA256, ensure_mobilenet_v2_weights

MODEL_NAME = "delf-mobilenetv2"
# Bump when anything that changes stored descriptors changes (layer, head, training, PCA).
VERSION = "delf-mobilenetv2-v3"
VIEWS_PER_IMAGE = 8  # synthetic view pairs per bundled image (attention labels and whitening)
WHITENING_SEED = 0
LABEL_SEED = 1
WHITENING_SHRINKAGE = 0.01
HEAD_FILENAME = "attention_head.npz"
INPUT_NAME = "images"
OUTPUTS = ("features", "attention")
VERIFY_ATOL = 1e-3  # features reach ~30 in magnitude; relative error stays ~1e-5
# Copies of constants of torch-importing modules (this one stays light to import, so that an
# up-to-date check costs no torch import); test_delf_model checks they agree.
FEATURE_CHANNELS = 96  # services.models.delf.FEATURE_CHANNELS
PCA_DIMS = 40  # services.models.delf.PCA_DIMS
STRIDE = 16  # services.models.delf.STRIDE
STRIDE16_END = 14  # services.models.mobilenet_v2.STRIDE16_END
OPSET = 17  # services.models.export.OPSET
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

if TYPE_CHECKING:
    import torch

    from services.models.delf import DelfLocalModel


def export_onnx(model: DelfLocalModel, path: Path) -> None:
    """ONNX: ``images`` [1,3,H,W] float32 (H, W dynamic) → ``features``, ``attention``."""
    from services.models.export import export_torchscript

    axes = {0: "batch", 2: "height", 3: "width"}
    dynamic = {INPUT_NAME: axes, OUTPUTS[0]: axes, OUTPUTS[1]: axes}
    export_torchscript(model, [(1, 3, 224, 320)], path, list(OUTPUTS), dynamic, opset=OPSET)


def onnx_runner(path: Path) -> ScaleRunner:
    """A per-scale runner on an ONNX file (CPU): [1,3,H,W] → (features, attention)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, attention = session.run(list(OUTPUTS), {INPUT_NAME: batch})
        return features, attention

    return run


def verify_onnx(model: DelfLocalModel, path: Path, image: np.ndarray) -> float:
    """Max abs difference ONNX Runtime vs torch on a real image at three sizes."""
    import onnxruntime as ort
    import torch

    from services.models.export import ExportError

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for w, h in ((320, 240), (173, 229), (512, 384)):
        x = DelfExtractor.normalise(cv2.resize(image, (w, h)), IMAGENET_MEAN, IMAGENET_STD)
        got = session.run(list(OUTPUTS), {INPUT_NAME: x})
        with torch.no_grad():
            want = [t.numpy() for t in model(torch.from_numpy(x))]
        for g, t in zip(got, want, strict=True):
            if g.shape != t.shape:
                raise ExportError(f"ONNX output shape {g.shape} != torch {t.shape}")
            worst = max(worst, float(np.abs(g - t).max()))
    if worst >= VERIFY_ATOL:
        raise ExportError(f"ONNX local model differs from torch by {worst:.3g}")
    return worst


def save_head(head: torch.nn.Module, path: Path) -> None:
    """The trained attention head's state dict as .npz (no pickle): rebuilds the torch model
    the ONNX file was exported from (tests compare the two)."""
    np.savez(path, **{k: v.detach().numpy() for k, v in head.state_dict().items()})


def up_to_date(model_dir: Path) -> dict[str, Any] | None:
    """The manifest when ``model_dir`` holds a complete build of :data:`VERSION`."""
    from services.models.build import up_to_date as built  # build imports this module

    return built(model_dir, VERSION, (DEFAULT_BASE_SIDE, DEFAULT_BASE_SIDE))


def build_local(out: Path, weights_cache: Path | None = None) -> tuple[Path, dict[str, Any], str]:
    """Build the DELF model under ``out/local/VERSION`` unless up to date.

    The training images ship with scikit-image / scikit-learn, so it always builds. Returns
    (model_dir, manifest, state: "built" or "up to date").
    """
    model_dir = out / "local" / VERSION
    if (manifest := up_to_date(model_dir)) is not None:
        return model_dir, manifest, "up to date"
    started = time.perf_counter()
    import torch

    from services.embedder.delf import PcaWhitening
    from services.models.delf import (
        DelfLocalModel,
        MatchabilityTraining,
        NormAttention,
        train_matchability,
    )
    from services.models.delf_synthetic import (
        SKIMAGE_IMAGES,
        matchability_samples,
        random_crop,
        training_images,
    )
    from services.models.delf_whitening import learn_whitening, warped_pairs
    from services.models.mobilenet_v2 import load_mobilenet_v2

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    backbone = load_mobilenet_v2(ensure_mobilenet_v2_weights(weights_cache))
    images = training_images()
    crop_rng = np.random.default_rng(WHITENING_SEED)
    crops = [random_crop(image, crop_rng) for image in images for _ in range(VIEWS_PER_IMAGE)]
    training = MatchabilityTraining()
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp_onnx = model_dir / f".model.onnx.{os.getpid()}.tmp"
    try:
        # The frozen backbone's maps come from ONNX Runtime (~10x faster than torch on CPU).
        export_onnx(DelfLocalModel(backbone, NormAttention()).eval(), tmp_onnx)
        describe = _describer(tmp_onnx)
        anchors, positives = warped_pairs(describe, crops, DEFAULT_BASE_SIDE, WHITENING_SEED)
        first = learn_whitening(anchors, positives, PCA_DIMS, WHITENING_SHRINKAGE)
        whiten = PcaWhitening(first.mean.astype(np.float32), first.projection.astype(np.float32))
        samples = matchability_samples(
            describe, whiten, images, DEFAULT_BASE_SIDE, VIEWS_PER_IMAGE, LABEL_SEED
        )
        head, fit = train_matchability(samples.features, samples.labels, training)
        model = DelfLocalModel(backbone, head).eval()
        export_onnx(model, tmp_onnx)
        max_diff = verify_onnx(model, tmp_onnx, images[0])
        anchors, positives = warped_pairs(
            _describer(tmp_onnx), crops, DEFAULT_BASE_SIDE, WHITENING_SEED
        )
        whitening = learn_whitening(anchors, positives, PCA_DIMS, WHITENING_SHRINKAGE)
        (model_dir / "manifest.json").unlink(missing_ok=True)
        save_head(head, model_dir / HEAD_FILENAME)
        os.replace(tmp_onnx, model_dir / "model.onnx")
    finally:
        tmp_onnx.unlink(missing_ok=True)
    manifest = {
        "name": MODEL_NAME,
        "version": VERSION,
        "kind": "local",
        "feature_type": "delf",
        "sha256": sha256_file(model_dir / "model.onnx"),
        "input_name": INPUT_NAME,
        "output_name": OUTPUTS[0],
        "output_names": list(OUTPUTS),
        "input_size": [DEFAULT_BASE_SIDE, DEFAULT_BASE_SIDE],  # nominal: H, W are dynamic
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "output_dims": PCA_DIMS,
        "layer": f"mobilenet_v2.features[:{STRIDE16_END}]",
        "stride": STRIDE,
        "pyramid": {
            "scales": list(DEFAULT_SCALES),
            "base_side": DEFAULT_BASE_SIDE,
            "min_side": DEFAULT_MIN_SIDE,
            "max_side": DEFAULT_MAX_SIDE,
        },
        "pca": whitening.to_json(),
        "training": {
            "data": "synthetic view pairs of the images bundled with scikit-image "
            f"({', '.join(SKIMAGE_IMAGES)}, stereo_motorcycle) and scikit-learn "
            "(load_sample_images)",
            "attention": "self-supervised matchability (services.models.delf_synthetic)",
            "images": len(images),
            "views_per_image": VIEWS_PER_IMAGE,
            "labelled_cells": int(len(samples.labels)),
            "matchable_share": round(fit["positive_rate"], 4),
            "attention_auc": round(fit["auc"], 4),
            "steps": training.steps,
            "seed": training.seed,
            "whitening_pairs": whitening.pairs,
            "onnx_max_abs_diff": max_diff,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "opset": OPSET,
        "weights_sha256": WEIGHTS_SHA256,
        "created_by": "services.models.delf_build",
    }
    tmp = model_dir / f".manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest) + "\n")
    os.replace(tmp, model_dir / "manifest.json")
    return model_dir, manifest, "built"


def _describer(path: Path) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """[H,W,3] uint8 RGB → (features [96, h, w], attention [h, w]) by the ONNX file."""
    run = onnx_runner(path)

    def describe(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, attention = run(DelfExtractor.normalise(image, IMAGENET_MEAN, IMAGENET_STD))
        return features[0], attention[0, 0]

    return describe
