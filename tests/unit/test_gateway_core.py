"""Gateway orchestration with in-memory stores and in-process ports (no servers)."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from services.common.errors import (
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from services.common.imaging import ImageLimits, decode_rgb
from services.common.index_types import IndexOverrides, SearchFilter
from services.common.local_features import LocalFeatures
from services.common.metadata import InMemoryMetadataStore
from services.common.objectstore import InMemoryObjectStore
from services.gateway.core import GatewayCore, GatewaySettings, Services
from services.gateway.ports import (
    Extraction,
    GlobalEmbeddings,
    IngestItem,
    RerankOutput,
    SearchQuery,
    ShardHit,
    ShardInfo,
    TextureHistograms,
)
from services.indexer.core import Shard

LIMITS = ImageLimits(max_bytes=1_000_000)


class PixelEmbedder:
    """Embeds an image as its normalised 8x8 colour thumbnail (192-d); version
    "pixels-v2" uses a 4x4 thumbnail (48-d). Counts images per version."""

    SIDES = {"pixels-v1": 8, "pixels-v2": 4}

    def __init__(self):
        self.embedded: dict[str, int] = {}
        self.port_calls: list[str] = []  # the port methods called, in order

    def extract(self, images, model_version, feature_type, texture, timeout):
        """The ingest's one call: built from the other methods (subclasses override them)."""
        self.port_calls.append("extract")
        return Extraction(
            self.embed_global(images, timeout, model_version),
            self.extract_local(images, feature_type, timeout),
            self.extract_texture(images, timeout) if texture else None,
        )

    def embed_global(self, images, timeout, model_version=""):
        version = model_version or "pixels-v1"
        if version not in self.SIDES:
            raise NotFoundError(f"model version {version!r} is not in the registry")
        side = self.SIDES[version]
        self.embedded[version] = self.embedded.get(version, 0) + len(images)
        rows = []
        for position, data in enumerate(images):
            try:
                rgb = decode_rgb(data, LIMITS)
            except InvalidArgumentError as exc:  # the embedder names images by position
                raise InvalidArgumentError(f"embedder: image {position}: {exc.message}") from exc
            thumb = np.asarray(Image.fromarray(rgb).resize((side, side)), np.float32).ravel()
            thumb = thumb - 127.5
            rows.append(thumb / (np.linalg.norm(thumb) + 1e-6))
        return GlobalEmbeddings(np.stack(rows).astype(np.float32), version)

    def extract_local(self, images, feature_type, timeout):
        return [
            LocalFeatures(
                "rootsift",
                np.zeros((0, 2), np.float32),
                np.zeros(0, np.float32),
                np.zeros((0, 128), np.float32),
                16,
                16,
            )
            for _ in images
        ]

    def extract_texture(self, images, timeout):
        from services.embedder.texture import TEXTURE_TYPE, extract_texture

        return TextureHistograms(
            [extract_texture(decode_rgb(data, LIMITS)) for data in images], TEXTURE_TYPE
        )


class InProcessShard:
    def __init__(self, shard: int, delay_s: float = 0.0, broken: bool = False):
        self.shard = shard
        self.core = Shard(shard, exact_threshold=1000)
        self.delay_s = delay_s
        self.broken = broken

    def upsert(self, collection, ids, vectors, metadata, overrides, timeout):
        self.core.upsert(collection, ids, vectors, metadata, overrides)

    def delete(self, collection, ids, timeout):
        return self.core.delete(collection, ids)[0]

    def search(self, collection, queries, k, search_filter, timeout, vectors_for_top=0):
        """Like the indexer, the best ``vectors_for_top`` hits carry their vectors."""
        time.sleep(self.delay_s)
        if self.broken:
            raise UnavailableError(f"shard {self.shard}: connection refused")
        results, _ = self.core.search(collection, queries, k, search_filter)
        out = []
        for neighbours in results:
            top = self.core.vectors(collection, [n.id for n in neighbours[:vectors_for_top]])
            top += [None] * (len(neighbours) - len(top))
            out.append([ShardHit(n.id, n.score, v) for n, v in zip(neighbours, top, strict=True)])
        return out

    def stats(self, collection, timeout):
        (s,) = self.core.stats(collection)
        return ShardInfo(self.shard, s.size, s.method)

    def drop(self, collection, timeout):
        return self.core.drop(collection)


class ReverseVerifier:
    """Puts the global order upside down, to show the gateway uses the verifier's order."""

    def rerank(self, query, candidates, timeout, return_matches=False):
        return [
            RerankOutput(c.id, float(i), c.global_score, i, "reversed")
            for i, c in enumerate(candidates)
        ][::-1]


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def gateway():
    shards = [InProcessShard(0), InProcessShard(1)]
    store, metadata = InMemoryObjectStore(), InMemoryMetadataStore()
    core = GatewayCore(
        Services(PixelEmbedder(), shards, ReverseVerifier(), store, metadata),
        GatewaySettings("images", "features", 1_000_000, "pixels-v1", default_timeout_s=2.0),
    )
    core.store, core.shards = store, shards  # for assertions
    yield core
    core.close()


def ingest_three(core):
    items = [IngestItem(f"id-{i}", image=jpeg(i), label=f"L{i}") for i in range(3)]
    return core.ingest("c", items, create=True, timeout_s=None)


def test_ingest_then_search_finds_the_same_image(gateway):
    outcomes = ingest_three(gateway)
    assert [o.replaced for o in outcomes] == [False] * 3
    result = gateway.search(SearchQuery("c", image=jpeg(1), k=2, rerank="none"), None)
    assert result.hits[0].id == "id-1"
    assert result.hits[0].label == "L1"
    assert not result.partial
    assert set(result.timings_ms) >= {"embed", "index", "metadata", "total"}
    assert gateway.store.exists(f"images/{outcomes[1].sha256}")
    assert gateway.store.exists(f"features/rootsift/{outcomes[1].sha256}.npz")


def test_an_ingest_makes_one_embedder_call_per_batch_with_texture(gateway):
    gateway.create_collection("tex", texture_features=True)
    embedder = gateway.services.embedder
    embedder.port_calls.clear()
    items = [IngestItem(f"t{i}", image=jpeg(i)) for i in range(5)]
    outcomes = gateway.ingest("tex", items, create=False, timeout_s=None)
    assert embedder.port_calls == ["extract"]
    from services.common.texture_features import texture_key
    from services.embedder.texture import TEXTURE_TYPE

    for outcome in outcomes:
        assert gateway.store.exists(texture_key(TEXTURE_TYPE, outcome.sha256, "features"))


def test_reingest_replaces_and_delete_removes(gateway):
    ingest_three(gateway)
    again = gateway.ingest("c", [IngestItem("id-1", image=jpeg(7))], create=False, timeout_s=None)
    assert again[0].replaced
    hits = gateway.search(SearchQuery("c", image=jpeg(7), k=5, rerank="none"), None).hits
    assert hits[0].id == "id-1" and hits[0].score > 0.99
    assert [h.id for h in hits].count("id-1") == 1
    deleted, not_found = gateway.delete("c", ["id-1", "nope"], None)
    assert (deleted, not_found) == (1, ["nope"])
    hits = gateway.search(SearchQuery("c", image=jpeg(7), k=5, rerank="none"), None).hits
    assert "id-1" not in [h.id for h in hits]
    with pytest.raises(NotFoundError):
        gateway.get("c", "id-1")


def test_bad_input_stores_nothing(gateway):
    ingest_three(gateway)
    before = sorted(gateway.store.list("images/"))
    bad = [IngestItem("ok", image=jpeg(5)), IngestItem("broken", image=b"not an image")]
    with pytest.raises(InvalidArgumentError, match="item 'broken'"):
        gateway.ingest("c", bad, create=False, timeout_s=None)
    with pytest.raises(InvalidArgumentError, match="twice"):
        gateway.ingest("c", [IngestItem("d", image=jpeg(1))] * 2, create=False, timeout_s=None)
    with pytest.raises(InvalidArgumentError, match="invalid"):
        gateway.ingest("c", [IngestItem("bad id!", image=jpeg(1))], create=False, timeout_s=None)
    with pytest.raises(InvalidArgumentError, match="invalid"):
        gateway.ingest("new", [IngestItem("bad id!", image=jpeg(1))], create=True, timeout_s=None)
    with pytest.raises(NotFoundError):
        gateway.collection("new")  # bad input created nothing
    assert sorted(gateway.store.list("images/")) == before
    with pytest.raises(NotFoundError):
        gateway.get("c", "ok")


def test_search_validation(gateway):
    ingest_three(gateway)
    with pytest.raises(NotFoundError, match="does not exist"):
        gateway.search(SearchQuery("missing", image=jpeg(1)), None)
    with pytest.raises(InvalidArgumentError, match="k must be"):
        gateway.search(SearchQuery("c", image=jpeg(1), k=5000), None)
    with pytest.raises(InvalidArgumentError, match="rerank mode"):
        gateway.search(SearchQuery("c", image=jpeg(1), rerank="magic"), None)


def test_a_failed_shard_gives_partial_results_or_unavailable(gateway):
    ingest_three(gateway)
    gateway.shards[1].broken = True
    result = gateway.search(SearchQuery("c", image=jpeg(0), k=3, rerank="none"), None)
    assert result.partial and result.missing_shards == [1]
    with pytest.raises(UnavailableError, match="did not answer"):
        gateway.search(SearchQuery("c", image=jpeg(0), rerank="none", require_complete=True), None)


def test_a_slow_shard_is_cut_off_at_the_deadline(gateway):
    ingest_three(gateway)
    gateway.shards[0].delay_s = 1.0
    started = time.monotonic()
    result = gateway.search(SearchQuery("c", image=jpeg(0), k=3, rerank="none"), 0.3)
    assert time.monotonic() - started < 0.9
    assert result.partial and result.missing_shards == [0]


def test_geometric_mode_uses_the_verifier_order(gateway):
    ingest_three(gateway)
    plain = gateway.search(SearchQuery("c", image=jpeg(0), k=3, rerank="none"), None).hits
    geometric = gateway.search(SearchQuery("c", image=jpeg(0), k=3, rerank="geometric"), None).hits
    assert [h.id for h in geometric] == [h.id for h in plain][::-1]
    assert geometric[0].reason == "reversed"


def test_filters_are_applied_inside_the_shards(gateway):
    items = [
        IngestItem(
            f"id-{i}",
            image=jpeg(i),
            label="even" if i % 2 == 0 else "odd",
            attributes={"shop": "north" if i < 4 else "south"},
        )
        for i in range(8)
    ]
    gateway.ingest("c", items, create=True, timeout_s=None)
    query = jpeg(3)
    odd = gateway.search(
        SearchQuery("c", image=query, k=8, rerank="none", search_filter=SearchFilter("odd")), None
    ).hits
    assert odd[0].id == "id-3"
    assert {h.id for h in odd} == {"id-1", "id-3", "id-5", "id-7"}
    both = gateway.search(
        SearchQuery(
            "c",
            image=query,
            k=8,
            rerank="none",
            search_filter=SearchFilter("even", {"shop": "south"}),
        ),
        None,
    ).hits
    assert {h.id for h in both} == {"id-4", "id-6"}
    with pytest.raises(InvalidArgumentError, match="attribute names"):
        gateway.search(
            SearchQuery("c", image=query, search_filter=SearchFilter("", {"": "x"})), None
        )


def test_collection_index_settings_reach_the_shards(gateway):
    gateway.create_collection("tuned", index=IndexOverrides(exact_threshold=2))
    gateway.ingest("tuned", [IngestItem(f"t-{i}", image=jpeg(i)) for i in range(4)], False, None)
    for shard in gateway.shards:
        (stats,) = shard.core.stats("tuned")
        assert shard.core._collections["tuned"].index.exact_threshold == 2
    with pytest.raises(InvalidArgumentError, match="leaves_to_search"):
        gateway.create_collection("bad", index=IndexOverrides(num_leaves=10, leaves_to_search=20))


def test_a_collection_can_choose_a_registered_model_version(gateway):
    config = gateway.create_collection("v2", model_version="pixels-v2")
    assert config.model_version == "pixels-v2"
    gateway.ingest("v2", [IngestItem(f"m-{i}", image=jpeg(i)) for i in range(3)], False, None)
    result = gateway.search(SearchQuery("v2", image=jpeg(1), k=1), None)
    assert result.model_version == "pixels-v2" and result.hits[0].id == "m-1"
    assert gateway.create_collection("v1").model_version == "pixels-v1"
    with pytest.raises(NotFoundError, match="not in the registry"):
        gateway.create_collection("nope", model_version="no-such-model")
    with pytest.raises(NotFoundError):
        gateway.collection("nope")  # nothing was stored


class CountingMetadata(InMemoryMetadataStore):
    """Counts collection reads."""

    def __init__(self):
        super().__init__()
        self.collection_reads = 0

    def get_collection(self, name):
        self.collection_reads += 1
        return super().get_collection(name)


def test_a_search_reads_the_collection_once_unless_a_reshard_may_have_moved_ids():
    from dataclasses import replace

    from services.gateway.reshard import ReshardSettings

    metadata = CountingMetadata()
    shards = [InProcessShard(0), InProcessShard(1), InProcessShard(2)]
    settings = GatewaySettings(
        "images", "features", 1_000_000, "pixels-v1", default_shards=2,
        reshard=ReshardSettings(flip_grace_s=5.0),
    )  # fmt: skip
    core = GatewayCore(
        Services(PixelEmbedder(), shards, ReverseVerifier(), InMemoryObjectStore(), metadata),
        settings,
    )
    try:
        ingest_three(core)
        metadata.collection_reads = 0
        core.search(SearchQuery("c", image=jpeg(1), k=2, rerank="none"), None)
        assert metadata.collection_reads == 1
        # A reshard in progress: the search re-reads the layout after its shard round.
        stable = metadata.get_collection("c")
        metadata.update_collection(stable, replace(stable, target_shards=3))
        metadata.collection_reads = 0
        core.search(SearchQuery("c", image=jpeg(1), k=2, rerank="none"), None)
        assert metadata.collection_reads == 2
        # A search slower than half the flip grace re-reads as well (a reshard may have
        # opened, flipped and cleaned up meanwhile).
        resharding = metadata.get_collection("c")
        metadata.update_collection(resharding, replace(resharding, shards=3, target_shards=0))
        core._settings = replace(settings, reshard=ReshardSettings(flip_grace_s=0.0))
        metadata.collection_reads = 0
        core.search(SearchQuery("c", image=jpeg(1), k=2, rerank="none"), None)
        assert metadata.collection_reads == 2
    finally:
        core.close()
