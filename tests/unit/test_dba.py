"""Database-side augmentation passes on in-memory stores and in-process shards (no servers),
checked against a brute-force DBA of the vectors the shards hold."""

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.common.lease import InMemoryLease
from services.common.metadata import InMemoryMetadataStore
from services.common.objectstore import InMemoryObjectStore
from services.gateway.core import GatewayCore, GatewaySettings, Services
from services.gateway.dba import DatabaseAugmenter, DbaSettings
from services.gateway.ports import IngestItem, SearchQuery
from services.gateway.reembed import Reembedder, ReembedSettings
from services.gateway.reembed_store import InMemoryReembedStore
from tests.unit.test_gateway_core import InProcessShard as GatewayShard
from tests.unit.test_gateway_core import PixelEmbedder, ReverseVerifier
from tests.unit.test_reshard import InProcessShard as ReshardShard

TOP_N, ALPHA = 3, 3.0


class Shard(ReshardShard):
    """Every port the gateway and the pass use, over a real shard core."""

    delay_s, broken = 0.0, False
    search = GatewayShard.search  # with the vectors of the best hits, as the indexer answers

    def drop(self, collection, timeout):
        return self.core.drop(collection)

    def held(self, collection):
        """{id: float32 [d] vector} this shard holds under `collection`."""
        page = self.core.fetch(collection, limit=5000)
        return dict(zip(page.ids, page.vectors, strict=True))


def photo(group: int, member: int) -> bytes:
    """A 32x32 PNG: group `group`'s pattern plus member-specific noise (groups of near
    duplicates give DBA neighbours worth combining)."""
    base = np.random.default_rng(group).integers(0, 255, (32, 32, 3)).astype(np.float32)
    noise = np.random.default_rng(1000 + 31 * group + member).normal(0, 40, (32, 32, 3))
    array = np.clip(base + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def cluster():
    shards = [Shard(0), Shard(1)]
    metadata = InMemoryMetadataStore()
    services = Services(PixelEmbedder(), shards, ReverseVerifier(), InMemoryObjectStore(), metadata)
    core = GatewayCore(
        services,
        GatewaySettings("images", "features", 1_000_000, "pixels-v1", default_timeout_s=5.0),
    )
    job = DatabaseAugmenter(shards, metadata, InMemoryLease(), DbaSettings(drop_grace_s=0.0))
    items = [
        IngestItem(f"g{g}-m{m}", image=photo(g, m), label=f"G{g}")
        for g in range(6)
        for m in range(4)
    ]
    core.ingest("c", items, create=True, timeout_s=None)
    yield core, job, shards
    job.close()
    core.close()


def held(shards, namespace):
    return {k: v for shard in shards for k, v in shard.held(namespace).items()}


def brute_force_dba(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """x' = normalise(x + sum over the top_n most similar other x_j of max(s, 0)^alpha x_j)."""
    ids = sorted(raw)
    x = np.stack([raw[i] for i in ids]).astype(np.float64)
    sims = x @ x.T
    out = {}
    for row, image_id in enumerate(ids):
        order = [j for j in np.argsort(-sims[row], kind="stable") if j != row][:TOP_N]
        combined = x[row] + sum(max(sims[row, j], 0.0) ** ALPHA * x[j] for j in order)
        out[image_id] = combined / np.linalg.norm(combined)
    return out


def assert_matches_brute_force(shards, namespace, raw_namespace="c"):
    want = brute_force_dba(held(shards, raw_namespace))
    got = held(shards, namespace)
    assert set(got) == set(want)
    worst = max(float(np.abs(got[i] - want[i]).max()) for i in want)
    assert worst < 1e-5


def test_a_pass_writes_the_brute_force_dba_and_searches_use_it(cluster):
    core, job, shards = cluster
    phases = [p.phase for p in job.run("c", TOP_N, ALPHA, page_size=5)]
    assert phases[0] == "started" and phases[-2:] == ["published", "done"]
    assert set(phases[1:-2]) == {"augmenting"}
    config = core.collection("c")
    assert (config.dba_top_n, config.dba_pass, config.dba_pending_pass) == (TOP_N, 1, 0)
    assert_matches_brute_force(shards, "c~1")
    # augmentation changed the vectors (the groups' members have neighbours worth adding)
    raw, augmented = held(shards, "c"), held(shards, "c~1")
    assert max(float(np.abs(raw[i] - augmented[i]).max()) for i in raw) > 0.05
    query = core.services.embedder.embed_global([photo(2, 1)], None).vectors[0]
    outcome = core.search(SearchQuery("c", image=photo(2, 1), k=4, rerank="none"), None)
    assert {hit.id for hit in outcome.hits} == {f"g2-m{m}" for m in range(4)}
    for hit in outcome.hits:
        assert hit.score == pytest.approx(float(query @ augmented[hit.id]), abs=1e-5)


def test_writes_during_a_pass_are_neither_lost_nor_undone(cluster):
    """Writes land while the pass is between reading a shard and writing its copy: the pass
    must not overwrite the re-ingested id with its stale augmentation nor revive the deleted."""
    core, job, shards = cluster
    original = shards[0].copy_if_absent
    fired = []

    def racing_copy(collection, ids, vectors, metadata, overrides, fence, timeout):
        if not fired:
            fired.append(ids)
            core.ingest("c", [IngestItem(ids[0], image=photo(5, 9), label="G5")], False, None)
            core.delete("c", [ids[1]], None)
            core.ingest("c", [IngestItem("new", image=photo(1, 7), label="G1")], False, None)
        return original(collection, ids, vectors, metadata, overrides, fence, timeout)

    shards[0].copy_if_absent = racing_copy
    list(job.run("c", TOP_N, ALPHA))
    rewritten, deleted = fired[0][0], fired[0][1]
    raw, copy = held(shards, "c"), held(shards, "c~1")
    assert deleted not in raw and deleted not in copy
    assert set(copy) == set(raw)
    # written during the pass: their own current vectors, augmented by the next pass
    for image_id in (rewritten, "new"):
        np.testing.assert_allclose(copy[image_id], raw[image_id], atol=1e-6)
    hits = core.search(SearchQuery("c", image=photo(5, 9), k=30, rerank="none"), None).hits
    assert hits[0].id == rewritten and deleted not in {hit.id for hit in hits}
    shards[0].copy_if_absent = original
    list(job.run("c", TOP_N, ALPHA))
    config = core.collection("c")
    assert (config.dba_pass, config.dba_last_pass, config.dba_dropped_through) == (2, 2, 1)
    assert_matches_brute_force(shards, "c~2")
    assert held(shards, "c~1") == {}  # the replaced copy is dropped


def test_after_a_pass_ingests_and_deletes_reach_the_copy_at_once(cluster):
    core, job, shards = cluster
    list(job.run("c", TOP_N, ALPHA))
    core.ingest("c", [IngestItem("late", image=photo(9, 0), label="G9")], False, None)
    hits = core.search(SearchQuery("c", image=photo(9, 0), k=3, rerank="none"), None).hits
    assert hits[0].id == "late" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    core.delete("c", ["g3-m0", "late"], None)
    for image in (photo(3, 0), photo(9, 0)):
        hits = core.search(SearchQuery("c", image=image, k=30, rerank="none"), None).hits
        assert not {"g3-m0", "late"} & {hit.id for hit in hits}
    assert not {"g3-m0", "late"} & set(held(shards, "c~1"))


def test_turning_off_drops_the_copies_and_searches_use_the_vectors_again(cluster):
    core, job, shards = cluster
    list(job.run("c", TOP_N, ALPHA))
    assert [p.phase for p in job.run("c", 0, ALPHA)] == ["off"]
    config = core.collection("c")
    assert (config.dba_top_n, config.dba_pass) == (0, 0)
    assert held(shards, "c~1") == {}
    outcome = core.search(SearchQuery("c", image=photo(0, 0), k=1, rerank="none"), None)
    assert outcome.hits[0].score == pytest.approx(1.0, abs=1e-5)  # its own raw vector


def test_bad_settings_and_a_running_reshard_are_refused(cluster):
    core, job, _ = cluster
    with pytest.raises(InvalidArgumentError, match="top_n must be in 0..50"):
        list(job.run("c", 51, ALPHA))
    with pytest.raises(InvalidArgumentError, match="alpha"):
        list(job.run("c", TOP_N, -1.0))
    metadata = core.services.metadata
    config = core.collection("c")
    assert metadata.update_collection(config, replace(config, target_shards=3))
    with pytest.raises(FailedPreconditionError, match="being resharded"):
        list(job.run("c", TOP_N, ALPHA))


def test_views_while_resharding_leave_the_copy_alone(cluster):
    core, job, _ = cluster
    list(job.run("c", TOP_N, ALPHA))
    config = core.collection("c")
    assert config.search_view().index_name == "c~1"
    assert [v.index_name for v in config.generation_views()] == ["c", "c~1"]
    resharding = replace(config, target_shards=3)
    assert resharding.search_view().index_name == "c"
    assert [v.index_name for v in resharding.generation_views()] == ["c"]


def test_a_reembed_switch_stops_using_and_drops_the_old_generations_copy(cluster):
    core, job, shards = cluster
    list(job.run("c", TOP_N, ALPHA))
    reembed = Reembedder(
        core.services, InMemoryReembedStore(), ReembedSettings("images", default_drop_grace_s=0.0)
    )
    try:
        list(reembed.run("c", "pixels-v2"))
    finally:
        reembed.close()
    config = core.collection("c")
    assert (config.generation, config.dba_pass, config.dba_top_n) == (1, 0, TOP_N)
    assert config.search_view().index_name == "c@1"
    assert held(shards, "c~1") == {}
    list(job.run("c", TOP_N, ALPHA))
    assert core.collection("c").search_view().index_name == "c@1~2"
    assert_matches_brute_force(shards, "c@1~2", raw_namespace="c@1")
