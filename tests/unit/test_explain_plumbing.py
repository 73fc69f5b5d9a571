"""Texture mode and explained results through the protos, the verifier servicer and the gateway."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from skimage import data

from services.common.errors import FailedPreconditionError
from services.common.imaging import sha256_hex
from services.common.local_features import feature_key
from services.common.metadata import InMemoryMetadataStore
from services.common.metrics import ServiceMetrics
from services.common.objectstore import InMemoryObjectStore
from services.common.proto_convert import (
    RERANK_MODE_NAMES,
    RERANK_MODES_BY_NAME,
    local_features_to_proto,
    vectors_to_proto,
)
from services.common.texture_features import (
    histogram_from_bytes,
    histogram_to_bytes,
    texture_key,
)
from services.embedder.rootsift import extract_rootsift
from services.embedder.texture import TEXTURE_TYPE, lbp_histogram
from services.gateway.clients import _rerank_output
from services.gateway.core import GatewayCore, GatewaySettings, Services
from services.gateway.ports import IngestItem, RerankOutput, SearchQuery
from services.verifier.core import FeatureCache, GeometricReranker
from services.verifier.fusion import FusionSettings
from services.verifier.geometry import GeometrySettings
from services.verifier.servicer import VerifierServicer
from services.verifier.texture import HistogramCache, TextureReranker, TextureSettings
from tests.unit.test_gateway_core import InProcessShard, PixelEmbedder, jpeg
from visearch.v1 import common_pb2, verifier_pb2

ANGLE, SCALE = 30.0, 0.8


def test_texture_is_rerank_mode_3():
    assert common_pb2.RERANK_MODE_TEXTURE == 3
    assert RERANK_MODES_BY_NAME["texture"] == 3 and RERANK_MODE_NAMES[3] == "texture"


@pytest.fixture(scope="module")
def warp() -> np.ndarray:
    height, width = data.astronaut().shape[:2]
    return cv2.getRotationMatrix2D((width / 2, height / 2), ANGLE, SCALE)


@pytest.fixture(scope="module")
def store(warp) -> InMemoryObjectStore:
    store = InMemoryObjectStore()
    image = data.astronaut()
    warped = cv2.warpAffine(image, warp, (image.shape[1], image.shape[0]))
    store.put(feature_key("rootsift", "warped"), extract_rootsift(warped).to_npz())
    for i, texture in enumerate((data.brick(), data.brick()[::-1], data.grass(), data.grass().T)):
        histogram = lbp_histogram(np.ascontiguousarray(texture[:128, :128]))
        store.put(texture_key(TEXTURE_TYPE, f"t{i}"), histogram_to_bytes(histogram))
    return store


@pytest.fixture(scope="module")
def servicer(store) -> Iterator[VerifierServicer]:
    geometric = GeometricReranker(
        store, GeometrySettings(), FusionSettings(), FeatureCache(), single_threaded_blas=False
    )
    texture = TextureReranker(store, TextureSettings(min_global_score=0.0), HistogramCache())
    yield VerifierServicer(geometric, ServiceMetrics("verifier"), texture)
    geometric.close()
    texture.close()


def test_geometric_rerank_returns_inlier_pairs_in_original_pixels(servicer, warp):
    query = extract_rootsift(data.astronaut())
    request = verifier_pb2.RerankRequest(
        query=local_features_to_proto(query),
        mode=RERANK_MODES_BY_NAME["geometric"],
        candidates=[verifier_pb2.RerankCandidate(id="w", sha256="warped", global_score=0.5)],
        return_matches=True,
    )
    (result,) = servicer.Rerank(request, None).candidates
    output = _rerank_output(result)
    assert output.inliers >= 50 and output.matches >= output.inliers
    assert output.inlier_ratio == pytest.approx(output.inliers / output.matches)
    pairs = output.inlier_keypoints
    assert pairs is not None and pairs.shape == (output.inliers, 4) and pairs.dtype == np.float32
    expected = np.hstack([pairs[:, :2], np.ones((len(pairs), 1))]) @ warp.T
    assert np.median(np.linalg.norm(expected - pairs[:, 2:], axis=1)) < 2.0

    request.return_matches = False
    (plain,) = servicer.Rerank(request, None).candidates
    assert plain.inlier_keypoints == b"" and plain.inliers == result.inliers


def test_texture_rerank_through_the_servicer(servicer):
    query = lbp_histogram(np.ascontiguousarray(data.grass()[200:328, 200:328]))
    request = verifier_pb2.RerankRequest(
        mode=RERANK_MODES_BY_NAME["texture"],
        query_texture=vectors_to_proto(query[None, :])[0],
        texture_type=TEXTURE_TYPE,
        candidates=[
            verifier_pb2.RerankCandidate(
                id=f"c{i}", sha256=f"t{i}", global_score=0.9 - i / 10, label=label
            )
            for i, label in enumerate(["brick", "brick", "grass", "grass"])
        ],
    )
    results = [_rerank_output(c) for c in servicer.Rerank(request, None).candidates]
    assert [r.id for r in results] == ["c2", "c3", "c0", "c1"]
    assert all(r.predicted_label == "grass" and r.label_margin > 0 for r in results)


class RecordingVerifier:
    """Records the texture call; puts the predicted label (the last hit's) first."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def rerank(self, query, candidates, timeout, return_matches=False):
        raise AssertionError("texture mode must not call the geometric re-rank")

    def rerank_texture(self, query, texture_type, query_sha256, candidates, timeout):
        self.calls.append((query, texture_type, query_sha256, candidates))
        wanted = candidates[-1].label
        ordered = sorted(candidates, key=lambda c: c.label != wanted)
        return [
            RerankOutput(
                c.id,
                1.0 - i / 10,
                c.global_score,
                0,
                "texture",
                predicted_label=wanted,
                label_margin=0.5,
            )
            for i, c in enumerate(ordered)
        ]


def texture_gateway(verifier: RecordingVerifier, store: InMemoryObjectStore) -> GatewayCore:
    return GatewayCore(
        Services(
            PixelEmbedder(),
            [InProcessShard(0), InProcessShard(1)],
            verifier,
            store,
            InMemoryMetadataStore(),
        ),
        GatewaySettings("images", "features", 1_000_000, "pixels-v1", default_timeout_s=5.0),
    )


def test_gateway_texture_mode_stores_histograms_and_sends_labels():
    verifier = RecordingVerifier()
    store = InMemoryObjectStore()
    core = texture_gateway(verifier, store)
    try:
        images = [jpeg(i) for i in range(4)]
        items = [
            IngestItem(f"id-{i}", image=img, label=f"L{i % 2}") for i, img in enumerate(images)
        ]
        assert core.create_collection("c", texture_features=True).texture_features
        outcomes = core.ingest("c", items, create=True, timeout_s=None)
        stored = histogram_from_bytes(
            store.get(texture_key(TEXTURE_TYPE, outcomes[0].sha256, "features"))
        )
        assert stored.shape == (54,)

        outcome = core.search(SearchQuery("c", image=images[0], k=4, rerank="texture"), None)
        ((query, texture_type, query_sha, candidates),) = verifier.calls
        assert texture_type == TEXTURE_TYPE and query_sha == sha256_hex(images[0])
        np.testing.assert_array_equal(query, stored)
        assert {c.label for c in candidates} == {"L0", "L1"}
        assert len(candidates) == 4  # the collection's re-rank depth covers all four
        wanted = candidates[-1].label
        assert [h.label for h in outcome.hits[:2]] == [wanted, wanted]
        assert all(h.predicted_label == wanted and h.label_margin == 0.5 for h in outcome.hits)
        assert "texture" in outcome.timings_ms and "rerank" in outcome.timings_ms

        meta, data_bytes = core.get_image("c", "id-2")
        assert data_bytes == images[2] and meta.sha256 == sha256_hex(images[2])
    finally:
        core.close()


def test_collections_store_textures_only_when_asked_and_say_so_when_searched():
    verifier = RecordingVerifier()
    store = InMemoryObjectStore()
    core = texture_gateway(verifier, store)
    try:
        image = jpeg(0)
        (outcome,) = core.ingest("plain", [IngestItem("a", image=image)], True, None)
        assert not core.collection("plain").texture_features
        assert not store.exists(texture_key(TEXTURE_TYPE, outcome.sha256, "features"))
        with pytest.raises(FailedPreconditionError, match="--texture"):
            core.search(SearchQuery("plain", image=image, k=1, rerank="texture"), None)
        assert verifier.calls == []
        assert core.create_collection("textured", default_rerank="texture").texture_features
    finally:
        core.close()
