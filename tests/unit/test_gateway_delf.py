"""Gateway with a "delf" collection: stored feature type, query rotations, verifier input."""

import numpy as np

from services.common.local_features import QUERY_ROTATIONS, LocalFeatures, feature_key
from services.common.metadata import InMemoryMetadataStore
from services.common.objectstore import InMemoryObjectStore
from services.gateway.core import GatewayCore, GatewaySettings, Services
from services.gateway.ports import IngestItem, RerankOutput, SearchQuery
from tests.unit.test_gateway_core import InProcessShard, PixelEmbedder, jpeg


class DelfEmbedder(PixelEmbedder):
    """Records each ExtractLocal call; one random 40-d feature group per rotation."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple[float, ...]]] = []

    def extract_local(self, images, feature_type, timeout, rotations=()):
        self.calls.append((feature_type, tuple(rotations)))
        groups = len(rotations) if len(rotations) > 1 else 0
        n = 5 * max(groups, 1)
        rng = np.random.default_rng(0)
        return [
            LocalFeatures(
                feature_type,
                rng.uniform(0, 16, (n, 2)),
                np.ones(n),
                rng.standard_normal((n, 40)),
                16,
                16,
                group_sizes=(5,) * groups,
                rotations=tuple(rotations) if groups else (),
                model_version="delf-test-v1",
            )
            for _ in images
        ]


class RecordingVerifier:
    def __init__(self):
        self.queries: list[LocalFeatures] = []

    def rerank(self, query, candidates, timeout, return_matches=False):
        self.queries.append(query)
        return [RerankOutput(c.id, c.global_score, c.global_score, 0, "kept") for c in candidates]


def test_delf_collection_stores_delf_features_and_searches_with_rotations():
    embedder, verifier, store = DelfEmbedder(), RecordingVerifier(), InMemoryObjectStore()
    core = GatewayCore(
        Services(embedder, [InProcessShard(0)], verifier, store, InMemoryMetadataStore()),
        GatewaySettings("images", "features", 1_000_000, "pixels-v1", default_timeout_s=30.0),
    )
    try:
        config = core.create_collection("d", feature_type="delf")
        assert config.local_feature_type == "delf"
        (result,) = core.ingest("d", [IngestItem("a", image=jpeg(1))], create=False, timeout_s=None)
        assert embedder.calls == [("delf", ())]  # gallery images: upright only
        assert store.exists(feature_key("delf", result.sha256, "features", "delf-test-v1"))
        assert not store.exists(feature_key("delf", result.sha256, "features"))
        core.search(SearchQuery("d", image=jpeg(1), k=1, rerank="geometric"), None)
        assert embedder.calls[-1] == ("delf", QUERY_ROTATIONS["delf"])
        (query,) = verifier.queries
        assert query.rotations == QUERY_ROTATIONS["delf"] and len(query.group_sizes) == 4
        assert query.model_version == "delf-test-v1"
    finally:
        core.close()
