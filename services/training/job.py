"""The training job: labelled images of a collection (Redis + S3) → trained model in the registry.

Runs from ``visearch train`` (local stack) or as a Kubernetes Job (``python -m
services.training.main``). Reads only: collection config and image metadata from Redis, image
bytes and the parent model from the object store; writes only a new model version.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPreconditionError, NotFoundError
from services.common.metadata import RedisMetadataStore
from services.common.model_registry import (
    ModelManifest,
    fetch,
    load_local,
    publish,
    registry_prefix,
)
from services.common.objectstore import ObjectStore
from services.training.features import Backbone, Encoder, FeatureCache, TrainImage, TrunkRunner
from services.training.pipeline import (
    PipelineOutcome,
    PipelineSettings,
    Trainer,
    config_digest,
    data_digest,
    refit_all,
    run_pipeline,
    split_by_label,
)

log = logging.getLogger(__name__)
META_CHUNK = 500


@dataclass(frozen=True)
class JobSettings:
    collection: str
    pipeline: PipelineSettings
    force: bool = False
    images_bucket: str = "images"
    models_bucket: str = "models"
    cache_dir: Path = Path("~/.cache/visearch/train-features")
    model_cache_dir: Path = Path("~/.cache/visearch/models")
    work_dir: Path | None = None  # where the exported model is written before upload
    threads: int = 0  # ONNX Runtime threads for backbone features (0 = all cores)
    parent_version: str = ""  # default: the collection's model version
    # Train only when the collection has at least this many labelled images more than the
    # model it uses was trained on (0 = always); else :class:`UpToDate` is raised.
    min_new_images: int = 0


@dataclass(frozen=True)
class JobResult:
    version: str
    parent_version: str
    backbone_version: str
    published: bool
    outcome: PipelineOutcome
    data_digest: str
    images: int
    wall_s: float
    manifest: dict[str, object] | None

    def summary(self) -> dict[str, object]:
        o = self.outcome
        return {
            "version": self.version,
            "published": self.published,
            "parent_version": self.parent_version,
            "backbone_version": self.backbone_version,
            "dims": o.head.dims,
            "images": self.images,
            "train": {"images": o.train_images, "labels": o.train_labels},
            "holdout": {"images": o.holdout_images, "labels": o.holdout_labels},
            "metrics": o.metrics(),
            "stats": {k: v for k, v in o.stats.as_dict().items() if k != "loss_per_epoch"},
            "features_s": round(o.features_s, 1),
            "train_s": round(o.train_s, 1),
            "wall_s": round(self.wall_s, 1),
            "data_digest": self.data_digest,
        }


class UpToDate(Exception):
    """Not enough new labelled images since the collection's model was trained: nothing done."""

    def __init__(self, message: str, new_images: int) -> None:
        super().__init__(message)
        self.message = message
        self.new_images = new_images


class ModelWorseError(FailedPreconditionError):
    """The trained model scores below the raw backbone on held-out labels."""

    def __init__(self, message: str, result: JobResult) -> None:
        super().__init__(message)
        self.result = result


def labelled_images(
    redis_url: str, store: ObjectStore, collection: str, images_bucket: str
) -> list[TrainImage]:
    """Every image of ``collection`` with a non-empty label, sorted by id."""
    metadata = RedisMetadataStore(redis_url)
    ids = metadata.list_ids(collection)
    images = []
    for start in range(0, len(ids), META_CHUNK):
        for meta in metadata.get_images(collection, ids[start : start + META_CHUNK]):
            if meta is None or not meta.label:
                continue
            key = f"{images_bucket}/{meta.sha256}"
            images.append(TrainImage(meta.id, meta.label, meta.sha256, lambda k=key: store.get(k)))
    return images


def check_trainable(images: list[TrainImage], holdout: float, seed: int, collection: str) -> None:
    """Fail early, with what to do, when the split cannot train or evaluate."""
    labels = {im.label for im in images}
    if len(labels) < 3:
        raise FailedPreconditionError(
            f"collection {collection!r} has {len(images)} labelled images in {len(labels)} "
            "labels; training needs at least 3 labels (2 to train, 1 held out): ingest images "
            "with labels (`visearch ingest --label-regex ...` or a manifest with a label column)"
        )
    train, held = split_by_label(images, holdout, seed)
    per_label: dict[str, int] = {}
    for im in train:
        per_label[im.label] = per_label.get(im.label, 0) + 1
    if len(per_label) < 2:
        raise FailedPreconditionError(
            f"only {len(per_label)} label left for training after holding out "
            f"{len({im.label for im in held})}; lower --holdout or add labels"
        )


def resolve_models(
    store: ObjectStore, settings: JobSettings, parent_version: str
) -> tuple[ModelManifest, Path]:
    """(parent manifest, backbone folder): a trained parent's own backbone is used."""
    cache = settings.model_cache_dir.expanduser()
    bucket = settings.models_bucket
    try:
        parent, _ = fetch(store, bucket, "global", parent_version, cache)
    except NotFoundError as exc:
        raise NotFoundError(
            f"model {parent_version!r} of the collection is not in the registry "
            f"({registry_prefix(bucket, 'global', parent_version)}): {exc.message}"
        ) from exc
    training = parent.raw.get("training")
    backbone_version = (
        str(training["backbone_version"]) if isinstance(training, dict) else parent.version
    )
    fetch(store, bucket, "global", backbone_version, cache)
    return parent, cache / "global" / backbone_version


def check_new_images(parent: ModelManifest, labelled: int, minimum: int, collection: str) -> None:
    """Raise :class:`UpToDate` unless ``labelled`` exceeds the images ``parent`` was trained
    on (none for an untrained backbone) by at least ``minimum``."""
    training = parent.raw.get("training")
    trained_on = int(training.get("images", 0)) if isinstance(training, dict) else 0
    new = labelled - trained_on
    if new < minimum:
        raise UpToDate(
            f"collection {collection!r}: {new} labelled images since its model {parent.version} "
            f"was trained (fewer than {minimum}); nothing to do",
            new,
        )


def encoder_and_trainer(
    backbone_dir: Path, tail_blocks: int, threads: int
) -> tuple[Encoder, Trainer]:
    """Head only: the served ONNX backbone and a head trainer; else the frozen trunk in torch
    and a trainer of the last ``tail_blocks`` blocks with the head (imports torch)."""
    if tail_blocks == 0:
        from services.training.pipeline import HeadTrainer

        return Backbone(backbone_dir, threads=threads), HeadTrainer()
    from services.training.finetune import TailTrainer
    from services.training.torch_backbone import torch_global_model

    manifest, _ = load_local(backbone_dir)
    model, gem_p = torch_global_model(manifest)
    blocks = int(model.backbone.num_blocks)
    if not 1 <= tail_blocks <= blocks:
        raise FailedPreconditionError(
            f"--tail-blocks must be in [0, {blocks}] for {manifest.version}, got {tail_blocks}"
        )
    split = blocks - tail_blocks
    return TrunkRunner(manifest, model, split, threads), TailTrainer(model, split, gem_p)


def version_name(backbone_version: str, dims: int, digest: str) -> str:
    """``<backbone>-trained<dims>-<12 hex>``: unique per data, settings and parent."""
    return re.sub(r"[^a-z0-9.-]", "-", f"{backbone_version}-trained{dims}-{digest[:12]}".lower())


def run_job(
    settings: JobSettings,
    store: ObjectStore,
    redis_url: str,
    progress: Callable[[int], None] | None = None,
    on_images: Callable[[int], None] | None = None,
) -> JobResult:
    """Train on the collection, evaluate, and publish unless worse (and not forced).

    Raises:
        ModelWorseError: the model scored below the raw backbone and ``force`` is off (its
            ``result`` holds the metrics; nothing was published).
    """
    t0 = time.perf_counter()
    config = RedisMetadataStore(redis_url).get_collection(settings.collection)
    if config is None:
        raise NotFoundError(f"collection {settings.collection!r} does not exist")
    parent_version = settings.parent_version or config.model_version
    images = labelled_images(redis_url, store, settings.collection, settings.images_bucket)
    seed = settings.pipeline.train.seed
    check_trainable(images, settings.pipeline.holdout, seed, settings.collection)
    if on_images is not None:
        on_images(len(images))
    parent, backbone_dir = resolve_models(store, settings, parent_version)
    if settings.min_new_images > 0:
        check_new_images(parent, len(images), settings.min_new_images, settings.collection)
    backbone_manifest, _ = load_local(backbone_dir)
    encoder, trainer = encoder_and_trainer(
        backbone_dir, settings.pipeline.train.tail_blocks, settings.threads
    )
    cache = FeatureCache(settings.cache_dir.expanduser(), encoder.key)
    outcome = run_pipeline(images, encoder, settings.pipeline, cache, progress, trainer)
    digest = data_digest(images)
    version = version_name(
        backbone_manifest.version,
        settings.pipeline.train.dims,
        config_digest(settings.pipeline, digest, parent.version),
    )
    result = JobResult(
        version, parent.version, backbone_manifest.version, False, outcome, digest,
        len(images), time.perf_counter() - t0, None,
    )  # fmt: skip
    if not outcome.improved and not settings.force:
        before, after = outcome.before["all"].map, outcome.after["all"].map
        raise ModelWorseError(
            f"the trained model is worse than the raw backbone on held-out labels "
            f"(mAP {after:.4f} < {before:.4f}); not published. Re-run with --force to "
            "publish it anyway, or train longer / with more labelled images",
            result,
        )
    from services.training.export import export_trained_model  # imports torch

    extra = {
        "parent_version": parent.version,
        "training": {
            "backbone_version": backbone_manifest.version,
            "backbone_sha256": backbone_manifest.sha256,
            "collection": settings.collection,
            "data_digest": digest,
            "images": len(images),
            "train_images": outcome.train_images,
            "train_labels": outcome.train_labels,
            "holdout_images": outcome.holdout_images,
            "holdout_labels": outcome.holdout_labels,
            "views": settings.pipeline.views,
            "config": settings.pipeline.train.as_dict(),
            "stats": {k: v for k, v in outcome.stats.as_dict().items() if k != "loss_per_epoch"},
            "forced": bool(settings.force and not outcome.improved),
        },
        "metrics": outcome.metrics(),
    }
    fitted = outcome.fitted
    if settings.pipeline.refit and outcome.holdout_images:
        fitted = refit_all(images, encoder, settings.pipeline, cache, trainer, progress)
        extra["training"]["refit_stats"] = {  # type: ignore[index]
            k: v for k, v in fitted.stats.as_dict().items() if k != "loss_per_epoch"
        }
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        manifest, _ = export_trained_model(
            Path(tmp) / version, fitted.head, backbone_manifest, version, extra,
            tuned=fitted.backbone,
        )  # fmt: skip
        publish(store, settings.models_bucket, Path(tmp) / version)
    log.info("published trained model", extra={"fields": {"version": version}})
    return JobResult(
        version, parent.version, backbone_manifest.version, True, outcome, digest,
        len(images), time.perf_counter() - t0, manifest,
    )  # fmt: skip
