"""Query expansion: the maths against a brute-force reference, the gateway's alpha-QE and
spatially verified QE with in-memory fakes, the shards' returned vectors, and validation."""

import io

import numpy as np
import pytest
from PIL import Image

from services.common.config import ServerConfig
from services.common.errors import InvalidArgumentError
from services.common.grpc_server import RunningServer
from services.common.index_types import NO_FILTER
from services.common.metadata import InMemoryMetadataStore
from services.common.metrics import ServiceMetrics
from services.common.objectstore import InMemoryObjectStore
from services.common.proto_convert import vectors_to_proto
from services.gateway import query_expansion as qe
from services.gateway.clients import GrpcShard, _vector
from services.gateway.core import GatewayCore, GatewaySettings, Services
from services.gateway.ports import IngestItem, RerankOutput, SearchQuery
from services.gateway.servicer import _collection_proto, query_expansion_from_proto
from services.indexer.core import Shard
from services.indexer.main import add_indexer
from services.indexer.servicer import IndexerServicer
from tests.unit.test_gateway_core import InProcessShard, PixelEmbedder
from visearch.v1 import gateway_pb2, indexer_pb2

ITEMS = 40
GROUPS = 8


VectorShard = InProcessShard  # returns vectors with its best hits, as the indexer does


class InlierVerifier:
    """Gives the chosen ids `inliers` inliers (a bonus of inliers / 10 above 8), the rest none."""

    def __init__(self, inliers: dict[str, int]):
        self.inliers = inliers

    def rerank(self, query, candidates, timeout, return_matches=False):
        outputs = []
        for c in candidates:
            n = self.inliers.get(c.id, 0)
            score = c.global_score + (n / 10 if n > qe.DEFAULT_VERIFIED_MIN_INLIERS else 0.0)
            outputs.append(RerankOutput(c.id, score, c.global_score, n, f"{n} inliers"))
        return sorted(outputs, key=lambda o: -o.score)


def group_image(item: int) -> bytes:
    """A 32x32 PNG: its group's pattern plus item noise, so groups share structure."""
    group = item % GROUPS
    base = np.random.default_rng(1000 + group).integers(0, 255, (32, 32, 3))
    noise = np.random.default_rng(item).normal(0, 90, (32, 32, 3))
    array = np.clip(base + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def gateway():
    embedder = PixelEmbedder()
    verifier = InlierVerifier({})
    core = GatewayCore(
        Services(
            embedder,
            [VectorShard(0), VectorShard(1)],
            verifier,
            InMemoryObjectStore(),
            InMemoryMetadataStore(),
        ),
        GatewaySettings("images", "features", 1_000_000, "pixels-v1", default_timeout_s=5.0),
    )
    core.verifier = verifier
    core.create_collection("plain")
    core.create_collection("qe", query_expansion=qe.QueryExpansion(top_n=3, alpha=3.0))
    items = [IngestItem(f"id-{i}", image=group_image(i)) for i in range(ITEMS)]
    for name in ("plain", "qe"):
        core.ingest(name, items, create=False, timeout_s=None)
    database = embedder.embed_global([group_image(i) for i in range(ITEMS)], None).vectors
    core.database = database  # float32 [ITEMS, 192] in id order, for the references
    yield core
    core.close()


def reference_ids(database: np.ndarray, query: np.ndarray, top_n: int, alpha: float, k: int):
    """Brute force, written out without services/gateway/query_expansion.expand."""
    sims = database @ query
    expanded = query.astype(np.float64).copy()
    for row in np.argsort(-sims, kind="stable")[:top_n]:
        expanded += max(float(sims[row]), 0.0) ** alpha * database[row]
    expanded /= np.linalg.norm(expanded)
    order = np.argsort(-(database @ expanded), kind="stable")[:k]
    return [f"id-{row}" for row in order], database @ expanded


def plain_ids(database: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    return [f"id-{row}" for row in np.argsort(-(database @ query), kind="stable")[:k]]


def test_expand_matches_the_formula_and_skips_missing_results():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(2, 6)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    neighbours = rng.normal(size=(2, 3, 6)).astype(np.float32)
    sims = np.array([[0.9, 0.5, -0.2], [0.7, np.nan, 0.1]], np.float32)
    got = qe.expand(queries, neighbours, sims, alpha=3.0)
    for q in range(2):
        want = queries[q].astype(np.float64).copy()
        for n in range(3):
            if not np.isnan(sims[q, n]):
                want += max(float(sims[q, n]), 0.0) ** 3 * neighbours[q, n]
        np.testing.assert_allclose(got[q], want / np.linalg.norm(want), atol=1e-6)
    # alpha = 0: every present result weighs 1 (average query expansion).
    got = qe.expand(queries[:1], neighbours[:1], np.array([[0.9, 0.5, 0.1]], np.float32), 0.0)
    want = queries[0] + neighbours[0].sum(axis=0)
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), atol=1e-6)


def test_alpha_qe_equals_the_brute_force_reference(gateway):
    k, hits_seen = 10, 0
    for query_item in (3, 11, 26):
        query_image = group_image(query_item + 200)  # a new photo of group query_item % 8
        query = gateway.services.embedder.embed_global([query_image], None).vectors[0]
        want, sims = reference_ids(gateway.database, query, 3, 3.0, k)
        assert want != plain_ids(gateway.database, query, k)  # the test can tell QE apart
        got = gateway.search(SearchQuery("qe", image=query_image, k=k, rerank="none"), None)
        assert [h.id for h in got.hits] == want
        np.testing.assert_allclose(
            [h.score for h in got.hits], [sims[int(i[3:])] for i in want], atol=1e-5
        )
        assert {"index", "index_expanded"} <= set(got.timings_ms)
        hits_seen += len(got.hits)
    assert hits_seen == 3 * k


def test_per_request_override_and_collection_default(gateway):
    query_image = group_image(205)
    query = gateway.services.embedder.embed_global([query_image], None).vectors[0]
    k = 12
    off = gateway.search(
        SearchQuery("qe", image=query_image, k=k, query_expansion=qe.QueryExpansion(top_n=0)),
        None,
    )
    assert [h.id for h in off.hits] == plain_ids(gateway.database, query, k)
    plain = gateway.search(SearchQuery("plain", image=query_image, k=k), None)
    assert [h.id for h in plain.hits] == plain_ids(gateway.database, query, k)
    on = gateway.search(
        SearchQuery("plain", image=query_image, k=k, query_expansion=qe.QueryExpansion(5, 0.0)),
        None,
    )
    assert [h.id for h in on.hits] == reference_ids(gateway.database, query, 5, 0.0, k)[0]


def test_verified_qe_keeps_verified_on_top_and_fills_from_the_expanded_search(gateway):
    query_image = group_image(1000)
    query = gateway.services.embedder.embed_global([query_image], None).vectors[0]
    verified = ["id-7", "id-33"]  # verified ones from the first search's candidates
    gateway.verifier.inliers = {"id-7": 30, "id-33": 12, "id-2": 8}  # 8 = the minimum: not trusted
    k = 10
    first = gateway.search(
        SearchQuery("plain", image=query_image, k=k, rerank="geometric", query_expansion=qe.OFF),
        None,
    )
    assert [h.id for h in first.hits[:2]] == ["id-7", "id-33"]
    got = gateway.search(
        SearchQuery(
            "plain",
            image=query_image,
            k=k,
            rerank="geometric",
            query_expansion=qe.QueryExpansion(verified=True),
        ),
        None,
    )
    expanded = query + gateway.database[7] + gateway.database[33]
    expanded /= np.linalg.norm(expanded)
    order = [f"id-{r}" for r in np.argsort(-(gateway.database @ expanded), kind="stable")]
    fill = [i for i in order if i not in verified][: k - 2]
    assert [h.id for h in got.hits] == verified + fill
    assert [h.id for h in got.hits] != [h.id for h in first.hits]  # the expansion changed it
    scores = [h.score for h in got.hits]
    assert scores == sorted(scores, reverse=True)
    assert "verified results" in got.hits[-1].reason
    assert "index_verified" in got.timings_ms


def test_verified_qe_without_verified_hits_changes_nothing(gateway):
    query_image = group_image(1001)
    gateway.verifier.inliers = {"id-4": 8}
    searches = [
        gateway.search(
            SearchQuery(
                "plain", image=query_image, k=8, rerank="geometric", query_expansion=expansion
            ),
            None,
        )
        for expansion in (None, qe.QueryExpansion(verified=True))
    ]
    assert [h.id for h in searches[0].hits] == [h.id for h in searches[1].hits]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (qe.QueryExpansion(top_n=-1), "top_n must be in 0..50"),
        (qe.QueryExpansion(top_n=51), "top_n must be in 0..50"),
        (qe.QueryExpansion(top_n=3, alpha=-1.0), "alpha must be a number in 0..10"),
        (qe.QueryExpansion(top_n=3, alpha=float("nan")), "alpha must be a number in 0..10"),
        (qe.QueryExpansion(top_n=3, alpha=11.0), "alpha must be a number in 0..10"),
    ],
)
def test_bad_settings_are_invalid_arguments(gateway, settings, message):
    with pytest.raises(InvalidArgumentError, match=message) as raised:
        gateway.search(SearchQuery("qe", image=group_image(1), query_expansion=settings), None)
    assert raised.value.status == "INVALID_ARGUMENT"
    with pytest.raises(InvalidArgumentError, match=message):
        gateway.create_collection("bad", query_expansion=settings)


def test_verified_expansion_needs_geometric_rerank(gateway):
    with pytest.raises(InvalidArgumentError, match="set rerank to geometric"):
        gateway.search(
            SearchQuery(
                "qe",
                image=group_image(1),
                rerank="none",
                query_expansion=qe.QueryExpansion(verified=True),
            ),
            None,
        )


def test_collection_keeps_its_settings_and_proto_alpha_defaults(gateway):
    assert query_expansion_from_proto(gateway_pb2.QueryExpansion(top_n=4)).alpha == 3.0
    zero = query_expansion_from_proto(gateway_pb2.QueryExpansion(top_n=4, alpha=0.0))
    assert zero == qe.QueryExpansion(4, 0.0, False)
    stored = _collection_proto(gateway.collection("qe")).query_expansion
    assert (stored.top_n, stored.alpha, stored.verified) == (3, 3.0, False)
    assert _collection_proto(gateway.collection("plain")).query_expansion.top_n == 0


def test_indexer_returns_packed_vectors_for_the_best_hits():
    shard = Shard(0, exact_threshold=1000)
    vectors = np.eye(4, dtype=np.float32)[:3] * 0.6 + 0.4
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    shard.upsert("c", ["a", "b", "c"], vectors)
    servicer = IndexerServicer(shard, ServiceMetrics("indexer-test"))
    request = indexer_pb2.IndexSearchRequest(
        collection="c", queries=vectors_to_proto(vectors[1:2]), k=3, vectors_for_top=2
    )
    (result,) = servicer.Search(request, None).results
    assert [n.id for n in result.neighbors][0] == "b"
    np.testing.assert_array_equal(_vector(result.neighbors[0].vector), vectors[1])
    assert _vector(result.neighbors[1].vector) is not None
    assert result.neighbors[2].vector == b""
    plain = servicer.Search(
        indexer_pb2.IndexSearchRequest(collection="c", queries=vectors_to_proto(vectors[1:2]), k=3),
        None,
    )
    assert all(n.vector == b"" for n in plain.results[0].neighbors)


def test_grpc_shard_gets_the_vectors_over_the_wire():
    """A real in-process indexer server: GrpcShard.search decodes the packed vectors."""
    shard = Shard(0, exact_threshold=1000)
    vectors = np.random.default_rng(3).normal(size=(20, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    shard.upsert("c", [f"v{i}" for i in range(20)], vectors)
    metrics = ServiceMetrics("indexer")
    config = ServerConfig.from_env({"VISEARCH_GRPC_PORT": "0"}, "indexer", 0)
    running = RunningServer(
        config, metrics, lambda s: add_indexer(s, IndexerServicer(shard, metrics))
    )
    try:
        client = GrpcShard(0, running.address, 4 << 20)
        (hits,) = client.search("c", vectors[5:6], 6, NO_FILTER, 5.0, vectors_for_top=3)
        assert hits[0].id == "v5"
        for hit in hits[:3]:
            np.testing.assert_array_equal(hit.vector, vectors[int(hit.id[1:])])
        assert all(hit.vector is None for hit in hits[3:])
        (plain,) = client.search("c", vectors[5:6], 6, NO_FILTER, 5.0)
        assert [h.id for h in plain] == [h.id for h in hits]
        assert all(hit.vector is None for hit in plain)
        client.channel.close()
    finally:
        running.stop(0)


def test_gateway_default_applies_to_collections_created_without_their_own():
    default = qe.QueryExpansion(verified=True)
    core = GatewayCore(
        Services(
            PixelEmbedder(),
            [VectorShard(0)],
            InlierVerifier({}),
            InMemoryObjectStore(),
            InMemoryMetadataStore(),
        ),
        GatewaySettings(
            "images", "features", 1_000_000, "pixels-v1", default_query_expansion=default
        ),
    )
    try:
        assert core.create_collection("a").qe_verified
        assert not core.create_collection("b", query_expansion=qe.OFF).qe_verified
        core.ingest("new", [IngestItem("x", image=group_image(1))], create=True, timeout_s=None)
        assert core.collection("new").qe_verified
    finally:
        core.close()
