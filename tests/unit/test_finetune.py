"""Fine-tuning the backbone's last blocks: loss, split, and a real (tiny) training that helps."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
import torch

from services.training.features import TrainImage, TrunkRunner
from services.training.finetune import ArcMarginLoss, TailTrainer
from services.training.pipeline import PipelineSettings, run_pipeline, split_photos
from services.training.settings import TrainConfig


def _image(label: str, n: int) -> TrainImage:
    return TrainImage(f"{label}-{n}", label, hashlib.sha256(f"{label}{n}".encode()).hexdigest(),
                      lambda: b"")  # fmt: skip


def test_split_photos_holds_out_photos_of_labels_with_several_and_keeps_one() -> None:
    images = (
        [_image("a", i) for i in range(5)] + [_image("b", 0)] + [_image("c", i) for i in (0, 1)]
    )
    train, held = split_photos(images, 0.4, seed=3)
    assert sorted(im.id for im in train + held) == sorted(im.id for im in images)
    assert [im.label for im in held].count("a") == 2  # round(0.4 * 5)
    assert [im.label for im in held].count("c") == 1  # at least one, one stays
    assert "b" not in {im.label for im in held}  # a single photo is never held out
    assert split_photos(images, 0.4, seed=3) == (train, held)
    assert split_photos(images, 0.0, seed=3)[1] == []


def test_arc_margin_loss_penalises_the_target_angle() -> None:
    torch.manual_seed(0)
    loss = ArcMarginLoss(dims=8, classes=3, scale=10.0, margin=0.3)
    centres = torch.nn.functional.normalize(loss.weight.detach(), dim=1)
    targets = torch.tensor([0, 1, 2])
    on_centre = loss(centres, targets)
    without_margin = ArcMarginLoss(dims=8, classes=3, scale=10.0, margin=0.0)
    without_margin.weight = loss.weight
    assert float(on_centre.detach()) > float(without_margin(centres, targets).detach())
    wrong = loss(centres, torch.tensor([1, 2, 0]))
    assert float(wrong.detach()) > float(on_centre.detach())


def _products() -> list[tuple[str, bytes]]:
    """16 "products": quadrants of four photos that ship with scikit-image (alike in colour)."""
    skimage_data = pytest.importorskip("skimage.data")
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        rgb = getattr(skimage_data, name)()
        h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
        for q, (y, x) in enumerate(((0, 0), (0, w), (h, 0), (h, w))):
            ok, data = cv2.imencode(
                ".png", cv2.cvtColor(rgb[y : y + h, x : x + w], cv2.COLOR_RGB2BGR)
            )
            assert ok
            out.append((f"{name}-{q}", data.tobytes()))
    return out


def test_fine_tuning_on_a_tiny_catalogue_improves_its_held_out_views(
    built_model_dir, tmp_path
) -> None:
    """One image per label (packshots): new photos are unseen augmented views of them."""
    from services.common.model_registry import load_local
    from services.training.torch_backbone import torch_global_model

    manifest, _ = load_local(built_model_dir)
    model, gem_p = torch_global_model(manifest)
    split = model.backbone.num_blocks - 3
    images = [
        TrainImage(label, label, hashlib.sha256(data).hexdigest(), lambda d=data: d)
        for label, data in _products()
    ]
    settings = PipelineSettings(
        TrainConfig(dims=32, epochs=80, seed=0, threads=2, tail_blocks=3, loss="arcface"),
        views=6, eval_views=3, holdout=0.0, holdout_photos=0.0,
    )  # fmt: skip
    trainer = TailTrainer(model, split, gem_p)
    outcome = run_pipeline(images, TrunkRunner(manifest, model, split, 2), settings, None,
                           trainer=trainer)  # fmt: skip
    before, after = outcome.before["known"], outcome.after["known"]
    assert before.queries == after.queries == 16 * 3
    assert after.map >= before.map + 0.05, (before, after)
    assert outcome.improved
    # The trained model is the backbone with its last blocks changed, not the first ones.
    tuned = outcome.fitted.backbone
    assert tuned is not None
    first = next(iter(model.backbone.parameters()))
    assert torch.equal(first, next(iter(tuned.backbone.parameters())))
    changed = [
        not torch.equal(a, b) for a, b in zip(model.parameters(), tuned.parameters(), strict=True)
    ]
    assert any(changed) and not all(changed)
    # The exported ONNX model (trunk + tuned tail + head) serves what training scored.
    from services.common.imaging import ImageLimits, decode_rgb
    from services.embedder.core import GlobalModel, create_session
    from services.training.export import export_trained_model

    export_trained_model(tmp_path / "m", outcome.head, manifest, "tiny-trained", {}, tuned=tuned)
    served_manifest, served_path = load_local(tmp_path / "m")
    served = GlobalModel(served_manifest, create_session(served_path, ["CPUExecutionProvider"], 1))
    rgb = decode_rgb(images[0].load(), ImageLimits(1 << 26))
    got = served.run(served.preprocess(rgb)[None])
    want = outcome.fitted.embed(TrunkRunner(manifest, model, split).embed([rgb]))
    assert got.shape == (1, 32) and np.abs(got - want).max() < 2e-3  # float16 activations
