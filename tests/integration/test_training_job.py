"""The training job end to end on real Valkey + SeaweedFS S3: refuse when worse, publish."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from services.common.metadata import CollectionConfig, ImageMeta, RedisMetadataStore
from services.common.model_registry import MANIFEST_FILE, fetch, publish
from services.common.objectstore import S3ObjectStore
from visearch import localstack

UKBENCH = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "ukbench1000" / "images"
GROUPS = 8


@pytest.fixture(scope="module")
def labelled_collection(storage, built_model_dir):
    """A collection of 8 ukbench groups (32 images) stored as the gateway stores them."""
    redis_url, s3 = storage
    store = S3ObjectStore(s3, storage.s3_access_key, storage.s3_secret_key)
    store.ensure_buckets(list(localstack.BUCKETS))
    base = publish(store, "models", built_model_dir)
    metadata = RedisMetadataStore(redis_url)
    name = f"train-{int(time.time() * 1000)}"
    metadata.create_collection(
        CollectionConfig(name, base.version, 1, "none", "rootsift", 50, time.time())
    )
    for i in range(GROUPS * 4):
        data = (UKBENCH / f"ukbench{i:05d}.jpg").read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        store.put(f"images/{digest}", data)
        meta = ImageMeta(f"img{i}", digest, f"g{i // 4}", base.version, 0, time.time())
        metadata.put_image(name, meta)
    return name, store, redis_url, base, s3


def _args(collection: str, cache: Path, *extra: str) -> list[str]:
    """A head only (frozen backbone features), labels held out, no photos held out."""
    return ["-c", collection, "--epochs", "2", "--views", "1", "--holdout", "0.5",
            "--holdout-photos", "0", "--tail-blocks", "0", "--loss", "triplet", "--no-refit",
            "--cache-dir", str(cache), "--model-cache-dir", str(cache.parent / "models"),
            "--threads", "1", *extra]  # fmt: skip


def test_worse_model_is_refused_then_published_with_force(
    labelled_collection, storage, tmp_path, monkeypatch, capsys
) -> None:
    from services.training import main as job_main
    from services.training.pipeline import data_digest

    collection, store, redis_url, base, s3 = labelled_collection
    monkeypatch.setenv("VISEARCH_REDIS_URL", redis_url)
    monkeypatch.setenv("VISEARCH_S3_ENDPOINT", s3)
    monkeypatch.setenv("VISEARCH_S3_ACCESS_KEY", storage.s3_access_key)
    monkeypatch.setenv("VISEARCH_S3_SECRET_KEY", storage.s3_secret_key)
    cache = tmp_path / "features"
    models_before = set(store.list("models/global/"))

    # A 2-d projection of 1280-d features loses to the raw backbone on held-out labels.
    assert job_main.main(_args(collection, cache, "--dims", "2")) == job_main.EXIT_REFUSED
    refused = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    before, after = refused["metrics"]["before"]["all"], refused["metrics"]["after"]["all"]
    assert after["map"] < before["map"]
    assert refused["published"] is False and "--force" in refused["error"]
    assert set(store.list("models/global/")) == models_before
    cached = sorted(cache.rglob("*.npy"))
    # Training images: itself, its training view and its unseen evaluation view; held-out
    # images: itself and its evaluation view.
    assert len(cached) == GROUPS // 2 * 4 * 3 + GROUPS // 2 * 4 * 2

    assert job_main.main(_args(collection, cache, "--dims", "2", "--force")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(cache.rglob("*.npy")) == cached  # second run: features from the cache
    assert summary["published"] is True and summary["metrics"] == refused["metrics"]
    version = summary["version"]
    assert version.startswith(f"{base.version}-trained2-")
    manifest, model_path = fetch(store, "models", "global", version, tmp_path / "fetched")
    raw = manifest.raw
    assert manifest.output_dims == 2 and manifest.input_size == base.input_size
    assert (manifest.input_name, manifest.output_name) == (base.input_name, base.output_name)
    assert raw["parent_version"] == base.version
    assert raw["metrics"] == refused["metrics"]
    assert raw["training"]["forced"] is True
    assert raw["training"]["backbone_version"] == base.version
    assert raw["training"]["holdout_labels"] == GROUPS // 2
    from services.training.job import labelled_images

    images = labelled_images(redis_url, store, collection, "images")
    assert raw["training"]["data_digest"] == data_digest(images) == summary["data_digest"]
    assert store.exists(f"models/global/{version}/{MANIFEST_FILE}")


def test_trained_model_serves_like_the_global_model(labelled_collection, tmp_path) -> None:
    import numpy as np

    from services.common.imaging import ImageLimits, decode_rgb
    from services.embedder.core import GlobalModel, create_session
    from services.training.job import JobSettings, run_job
    from services.training.pipeline import PipelineSettings
    from services.training.train import TrainConfig

    collection, store, redis_url, base, _ = labelled_collection
    settings = JobSettings(
        collection=collection,
        pipeline=PipelineSettings(
            TrainConfig(dims=16, epochs=3, tail_blocks=0, loss="triplet"), views=1, holdout=0.5
        ),
        force=True,
        cache_dir=tmp_path / "features",
        model_cache_dir=tmp_path / "models",
        threads=1,
    )
    result = run_job(settings, store, redis_url)
    assert result.published and result.manifest is not None
    stats = result.outcome.stats
    assert (
        stats.batches_kept > 0
        and stats.steps + stats.batches_without_triplets == stats.batches_kept
    )
    assert stats.triplets_semi_hard + stats.triplets_fallback + stats.easy_pairs > 0
    manifest, path = fetch(store, "models", "global", result.version, tmp_path / "fetched")
    model = GlobalModel(manifest, create_session(path, ["CPUExecutionProvider"], 1))
    rgb = decode_rgb((UKBENCH / "ukbench00000.jpg").read_bytes(), ImageLimits(1 << 26))
    vectors = model.run(np.stack([model.preprocess(rgb)] * 2))
    assert vectors.shape == (2, 16) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_visearch_train_command_uses_the_stack_state(
    labelled_collection, storage, tmp_path
) -> None:
    from typer.testing import CliRunner

    from visearch.cli import app

    collection, store, redis_url, base, s3 = labelled_collection
    state = localstack.StackState(str(tmp_path), 1, "127.0.0.1:1", redis_url, s3, base.version)
    state.s3_access_key, state.s3_secret_key = storage.s3_access_key, storage.s3_secret_key
    state.save()
    args = ["train", "-c", collection, "--state-dir", str(tmp_path), "--json", "--dims", "8",
            "--epochs", "2", "--views", "1", "--holdout", "0.5", "--seed", "1", "--force",
            "--tail-blocks", "0", "--loss", "triplet",
            "--cache-dir", str(tmp_path / "features")]  # fmt: skip
    result = CliRunner().invoke(
        app, args, env={"VISEARCH_REDIS_URL": "", "VISEARCH_S3_ENDPOINT": ""}
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["published"] is True and summary["dims"] == 8
    assert store.exists(f"models/global/{summary['version']}/{MANIFEST_FILE}")
    missing = CliRunner().invoke(app, ["train", "-c", "no-such", "--state-dir", str(tmp_path)])
    assert missing.exit_code == 1 and "does not exist" in missing.output
