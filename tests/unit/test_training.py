"""Training core: semi-hard mining, batch composition, augmentation, split, scores, export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.training.augment import augment
from services.training.evaluate import retrieval_scores
from services.training.features import TrainImage
from services.training.mining import epoch_batches, has_positive_pair, semi_hard_triplets
from services.training.pipeline import holdout_scores, split_by_label

# Points 0,1 = A; 2,3 = B; 4,5 = C. Symmetric distances chosen so that, with margin 0.2:
#   (0,1) d=0.3: negatives 2 (0.2, hard), 3 (0.35, semi-hard), 4 (0.45, semi-hard), 5 (0.7, easy)
#         → the closest semi-hard negative: 3.
#   (1,0) d=0.3: every negative >= 0.5 = d+margin → easy, skipped.
#   (2,3) d=0.8: only 1 (0.9) is in (0.8, 1.0) → 1.
#   (3,2) d=0.8: 1 is at 1.0, not < 1.0 → easy, skipped.
#   (4,5), (5,4) d=1.5: no negative beyond 1.5 → fallback to the farthest negative (1; 2).
D = np.array(
    [
        [0.00, 0.30, 0.20, 0.35, 0.45, 0.70],
        [0.30, 0.00, 0.90, 1.00, 1.20, 0.60],
        [0.20, 0.90, 0.00, 0.80, 0.50, 1.10],
        [0.35, 1.00, 0.80, 0.00, 0.60, 0.40],
        [0.45, 1.20, 0.50, 0.60, 0.00, 1.50],
        [0.70, 0.60, 1.10, 0.40, 1.50, 0.00],
    ]
)
LABELS = np.array(["A", "A", "B", "B", "C", "C"])


def test_semi_hard_mining_picks_the_closest_semi_hard_negative() -> None:
    mined = semi_hard_triplets(D, LABELS, margin=0.2)
    assert {tuple(t) for t in mined.indices.tolist()} == {
        (0, 1, 3),
        (2, 3, 1),
        (4, 5, 1),
        (5, 4, 2),
    }
    assert (mined.semi_hard, mined.fallback, mined.easy_pairs) == (2, 2, 2)
    for a, p, n in mined.indices.tolist():
        assert LABELS[a] == LABELS[p] != LABELS[n]


def test_semi_hard_mining_with_a_wider_margin_takes_more_negatives() -> None:
    mined = semi_hard_triplets(D, LABELS, margin=0.5)  # (1,0): 0.6 is now inside (0.3, 0.8)
    assert (1, 0, 5) in {tuple(t) for t in mined.indices.tolist()}
    assert mined.easy_pairs == 0


def test_every_kept_batch_has_a_positive_pair_and_drops_are_counted() -> None:
    # 12 singleton labels (one view each: no positive possible) + 3 labels of 4 images x 2 views.
    labels, images = [], []
    for i in range(12):
        labels.append(f"single-{i}")
        images.append(100 + i)
    for lab in range(3):
        for im in range(4):
            labels += [f"multi-{lab}"] * 2
            images += [lab * 10 + im] * 2
    labels_arr, images_arr = np.array(labels), np.array(images)
    epoch = epoch_batches(labels_arr, images_arr, 4, 4, np.random.default_rng(0))
    assert epoch.dropped > 0
    seen = np.concatenate(epoch.batches)
    assert len(seen) == len(set(seen.tolist()))
    for batch in epoch.batches:
        assert has_positive_pair(labels_arr[batch])
    # every multi-image label is in kept batches, one view per image per epoch
    for lab in range(3):
        kept = [i for i in seen.tolist() if labels[i] == f"multi-{lab}"]
        assert sorted({images[i] for i in kept}) == [lab * 10 + im for im in range(4)]
    assert len(epoch.batches) + epoch.dropped >= 12 * 1 // 4


def test_a_single_image_label_contributes_two_views() -> None:
    labels = np.array(["x", "x", "x", "y", "y", "y"])
    images = np.array([0, 0, 0, 1, 1, 1])
    epoch = epoch_batches(labels, images, 8, 4, np.random.default_rng(1))
    assert epoch.dropped == 0 and len(epoch.batches) == 1
    assert sorted(labels[epoch.batches[0]].tolist()) == ["x", "x", "y", "y"]


def test_augment_is_a_pure_function_of_image_and_seed() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    sha = "ab" * 32
    assert augment(image, sha, 0) is image
    one, again, other = augment(image, sha, 3), augment(image, sha, 3), augment(image, sha, 4)
    assert np.array_equal(one, again)
    assert one.shape != other.shape or not np.array_equal(one, other)
    assert one.dtype == np.uint8 and one.ndim == 3


def _images(labels: list[str]) -> list[TrainImage]:
    return [TrainImage(f"id{i}", lab, f"{i:064x}", lambda: b"") for i, lab in enumerate(labels)]


def test_split_holds_out_whole_labels() -> None:
    images = _images([f"l{i // 3}" for i in range(30)])  # 10 labels x 3
    train, held = split_by_label(images, 0.2, seed=5)
    held_labels = {im.label for im in held}
    assert len(held_labels) == 2 and len(held) == 6
    assert not held_labels & {im.label for im in train}
    assert split_by_label(images, 0.2, seed=5)[1] == held


def test_scores_on_a_known_ranking() -> None:
    gallery = np.eye(4, dtype=np.float32)
    labels = np.array(["a", "a", "b", "b"])
    queries = np.array([[0.9, 0.0, 0.43, 0.0]], dtype=np.float32)  # a-image 0, then b-image 2
    s = retrieval_scores(queries, np.array(["a"]), gallery, labels)
    # ranking 0 (a), 2 (b), then 1 and 3 tie at 0 (stable: 1 (a), 3): AP = (1/1 + 2/3) / 2
    assert s.p_at_1 == 1.0 and s.map == pytest.approx((1 + 2 / 3) / 2)
    feats = np.stack([gallery, gallery], axis=1)  # augmented view = the image itself
    scores = holdout_scores(feats, labels)
    assert scores["augmented"].p_at_1 == 1.0 and scores["augmented"].queries == 4


def test_export_parity_and_manifest(tmp_path, built_model_dir) -> None:
    torch = pytest.importorskip("torch")
    from services.common.imaging import ImageLimits, decode_rgb
    from services.common.model_registry import load_local
    from services.embedder.core import GlobalModel, create_session
    from services.models.export import ExportError
    from services.training.export import build_torch_model, check_parity, export_trained_model
    from services.training.head import ProjectionHead

    backbone_manifest, backbone_path = load_local(built_model_dir)
    torch.manual_seed(0)
    head = ProjectionHead(backbone_manifest.output_dims, 16).eval()
    manifest, parity = export_trained_model(
        tmp_path / "m", head, backbone_manifest, "test-triplet16", {"parent_version": "p"}
    )
    assert parity < 1e-4
    trained, trained_path = load_local(tmp_path / "m")
    assert trained.output_dims == 16 and trained.input_size == backbone_manifest.input_size
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["parent_version"] == "p"
    # served like the global model: the embedder's own preprocessing and session
    from pathlib import Path

    photo = Path(__file__).resolve().parents[2].parent / "shared/datasets/ukbench1000/images"
    rgb = decode_rgb(sorted(photo.glob("*.jpg"))[0].read_bytes(), ImageLimits(1 << 26))
    served = GlobalModel(trained, create_session(trained_path, ["CPUExecutionProvider"], 1))
    base = GlobalModel(
        backbone_manifest, create_session(backbone_path, ["CPUExecutionProvider"], 1)
    )
    got = served.run(served.preprocess(rgb)[None])
    assert got.shape == (1, 16) and got.dtype == np.float32
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
    via_backbone = head.embed(base.run(base.preprocess(rgb)[None]))
    assert np.abs(got - via_backbone).max() < 1e-4
    # a torch model that differs from the exported file fails the parity check
    model = build_torch_model(head, backbone_manifest)
    with torch.no_grad():
        head.net.weight.mul_(-1.0)
    with pytest.raises(ExportError):
        check_parity(model, trained_path, backbone_manifest, 16)
