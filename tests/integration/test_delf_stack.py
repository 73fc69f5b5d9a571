"""DELF-style local features end to end: a "delf" collection, ingest, rotated query, re-rank."""

import pytest
from minio import Minio

from services.common.errors import InvalidArgumentError
from visearch import demo
from visearch.client import IngestItem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def delf_gallery(client, models_dir, tmp_path_factory):
    if not list((models_dir / "local").glob("*/manifest.json")):
        pytest.skip("no DELF local model (make models builds it when ukbench1000 is present)")
    samples = demo.write_samples(tmp_path_factory.mktemp("delf-samples"))
    info = client.create_collection("delf-gallery", local_feature_type="delf")
    assert info.local_feature_type == "delf"
    items = [IngestItem(p.stem, image=p.read_bytes(), label=p.stem[7:]) for p in samples]
    assert len(client.ingest("delf-gallery", items, create_collection=False)) == len(samples)
    return {p.stem: p for p in samples}


def test_ingest_stores_delf_features_under_their_type_and_model_version(
    stack, delf_gallery, models_dir
):
    newest = sorted((models_dir / "local").glob("*/manifest.json"))[-1].parent.name
    minio = Minio(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key, secure=False)
    stored = list(minio.list_objects("features", prefix=f"delf/{newest}/", recursive=True))
    assert len(stored) >= len(delf_gallery)


def test_rotated_query_is_verified_with_delf(client, delf_gallery):
    query = demo.rotated_cropped_query(delf_gallery["sample-coffee"])
    result = client.search("delf-gallery", query, k=3, rerank="geometric")
    top = result.hits[0]
    assert top.id == "sample-coffee"
    assert top.inliers >= 8, top.reason
    assert "inliers" in top.reason
    assert "local" in result.timings_ms and "rerank" in result.timings_ms


def test_unknown_local_feature_type_is_rejected(client):
    with pytest.raises(InvalidArgumentError, match="delf"):
        client.create_collection("bad-features", local_feature_type="orb")
