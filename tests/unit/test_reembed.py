"""The re-embed job on in-memory stores and in-process shards (no servers)."""

import numpy as np
import pytest

from services.common.errors import InvalidArgumentError, NotFoundError, UnavailableError
from services.common.metadata import InMemoryMetadataStore
from services.common.objectstore import InMemoryObjectStore
from services.gateway.core import GatewayCore, GatewaySettings, Services
from services.gateway.ports import IngestItem, SearchQuery
from services.gateway.reembed import Reembedder, ReembedSettings
from services.gateway.reembed_store import InMemoryReembedStore
from services.indexer.core import Shard, check_index_name
from services.indexer.durability import InMemorySnapshotStore, InMemoryWriteAheadLog
from tests.unit.test_gateway_core import InProcessShard, PixelEmbedder, ReverseVerifier, jpeg


class FlakyEmbedder(PixelEmbedder):
    """Fails the `fail_on`-th call for pixels-v2 (counting from 1), once."""

    def __init__(self, fail_on: int = 0):
        super().__init__()
        self.fail_on = fail_on
        self.v2_calls = 0

    def embed_global(self, images, timeout, model_version=""):
        if model_version == "pixels-v2":
            self.v2_calls += 1
            if self.v2_calls == self.fail_on:
                raise UnavailableError("embedder: connection reset (injected)")
        return super().embed_global(images, timeout, model_version)


@pytest.fixture
def cluster():
    embedder = FlakyEmbedder()
    shards = [InProcessShard(0), InProcessShard(1)]
    services = Services(
        embedder, shards, ReverseVerifier(), InMemoryObjectStore(), InMemoryMetadataStore()
    )
    core = GatewayCore(
        services,
        GatewaySettings("images", "features", 1_000_000, "pixels-v1", default_timeout_s=5.0),
    )
    store = InMemoryReembedStore()
    job = Reembedder(services, store, ReembedSettings("images", default_drop_grace_s=0.0))
    items = [IngestItem(f"id-{i}", image=jpeg(i), label=f"L{i}") for i in range(10)]
    core.ingest("c", items, create=True, timeout_s=None)
    yield core, job, embedder, shards, store
    job.close()
    core.close()


def namespaces(shards):
    return {s.collection: s.size for shard in shards for s in shard.core.stats()}


def sizes(shards, name):
    return sum(s.size for shard in shards for s in shard.core.stats() if s.collection == name)


def test_reembed_switches_and_drops_the_old_generation(cluster):
    core, job, embedder, shards, _ = cluster
    phases = [p.phase for p in job.run("c", "pixels-v2", batch_size=3)]
    assert phases == ["started"] + ["embedding"] * 4 + ["switched", "done"]
    config = core.collection("c")
    assert (config.model_version, config.generation, config.pending_model_version) == (
        "pixels-v2",
        1,
        "",
    )
    assert set(namespaces(shards)) == {"c@1"} and sizes(shards, "c@1") == 10
    outcome = core.search(SearchQuery("c", image=jpeg(4), k=3), None)
    assert outcome.model_version == "pixels-v2"
    assert outcome.hits[0].id == "id-4" and outcome.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert embedder.embedded["pixels-v2"] == 10 + 1 + 1  # gallery + probe + the search
    assert [p.phase for p in job.run("c", "pixels-v2")] == ["noop"]
    assert core.get("c", "id-3").model_version == "pixels-v2"


def test_an_unknown_version_changes_nothing(cluster):
    core, job, _, shards, _ = cluster
    with pytest.raises(NotFoundError):
        list(job.run("c", "pixels-v9"))
    config = core.collection("c")
    assert (config.model_version, config.pending_model_version) == ("pixels-v1", "")
    assert set(namespaces(shards)) == {"c"}


def test_a_failed_job_resumes_without_redoing_batches(cluster):
    core, job, embedder, shards, store = cluster
    embedder.fail_on = 4  # probe, batch 0, batch 1, then batch 2 fails
    seen = []
    with pytest.raises(UnavailableError, match="injected"):
        for progress in job.run("c", "pixels-v2", batch_size=3):
            seen.append(progress)
    assert store.done_batches("c") == {0, 1}
    # Searches still use the old version while the job is unfinished.
    assert core.search(SearchQuery("c", image=jpeg(1)), None).model_version == "pixels-v1"
    before = embedder.embedded["pixels-v2"]
    resumed = list(job.run("c", "pixels-v2", batch_size=3))
    assert resumed[0].phase == "resumed" and resumed[0].batches_skipped == 2
    assert embedder.embedded["pixels-v2"] - before == 10 - 6  # only the batches not done
    assert resumed[-1].phase == "done" and core.collection("c").generation == 1
    assert sizes(shards, "c@1") == 10


def test_writes_during_the_job_reach_the_new_generation(cluster):
    core, job, embedder, shards, _ = cluster
    run = job.run("c", "pixels-v2", batch_size=3)
    assert next(run).phase == "started"
    assert next(run).phase == "embedding"  # batch 0 (id-0, id-1, id-2) is done
    core.ingest("c", [IngestItem("new", image=jpeg(50), label="N")], False, None)
    core.ingest("c", [IngestItem("id-1", image=jpeg(51), label="L1")], False, None)  # done
    core.ingest("c", [IngestItem("id-8", image=jpeg(52), label="L8")], False, None)  # not yet
    core.delete("c", ["id-2", "id-9"], None)
    # Searching meanwhile uses the old generation, which has the writes too.
    during = core.search(SearchQuery("c", image=jpeg(50), k=1), None)
    assert (during.model_version, during.hits[0].id) == ("pixels-v1", "new")
    assert [p.phase for p in run][-1] == "done"
    assert sizes(shards, "c@1") == 10 + 1 - 2
    for image_id, seed in (("new", 50), ("id-1", 51), ("id-8", 52)):
        hit = core.search(SearchQuery("c", image=jpeg(seed), k=1), None).hits[0]
        assert hit.id == image_id and hit.score == pytest.approx(1.0, abs=1e-4)
    for gone in ("id-2", "id-9"):
        hits = core.search(SearchQuery("c", image=jpeg(int(gone[3:])), k=10), None).hits
        assert gone not in {h.id for h in hits}
    vectors = [
        shard.core.search("c@1", np.ones((1, 48), np.float32) / np.sqrt(48), 20)[0][0]
        for shard in shards
    ]
    assert {n.id for ns in vectors for n in ns} == {f"id-{i}" for i in (0, 1, 3, 4, 5, 6, 7, 8)} | {
        "new"
    }


def test_a_dropped_generation_stays_dropped_after_recovery():
    wal, snapshots = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    shard = Shard(0, 1000, wal, snapshots)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4, 8)).astype(np.float32)
    shard.upsert("c@1", ["a", "b"], vectors[:2])
    shard.upsert("c", ["a"], vectors[2:3])
    shard.snapshot("c@1")
    shard.upsert("c@1", ["d"], vectors[3:])
    assert shard.drop("c@1") == 3 and shard.drop("c@1") == 0
    restarted = Shard(0, 1000, wal, snapshots)
    restarted.recover()
    assert [s.collection for s in restarted.stats()] == ["c"]


def test_generation_names_are_for_shards_not_users(cluster):
    core = cluster[0]
    check_index_name("c@12")
    with pytest.raises(InvalidArgumentError):
        check_index_name("c@x")
    with pytest.raises(InvalidArgumentError):
        core.create_collection("c@1")


def test_an_ingest_straddling_the_job_start_reaches_the_new_generation(cluster):
    """The ingest read the config before the job published its pending generation and
    commits after the job listed the ids: its re-read of the config must catch it."""
    core, job, _, shards, _ = cluster
    run = job.run("c", "pixels-v2", batch_size=50)
    metadata = core.services.metadata
    commit = metadata.put_image
    steps = []

    def put_image(collection, meta):
        if not steps:
            steps.append(next(run).phase)  # pending generation published, ids listed
            steps.append(next(run).phase)  # the one batch re-embedded
        return commit(collection, meta)

    metadata.put_image = put_image
    core.ingest("c", [IngestItem("straddler", image=jpeg(60), label="S")], False, None)
    assert steps == ["started", "embedding"]
    assert [p.phase for p in run][-1] == "done"
    outcome = core.search(SearchQuery("c", image=jpeg(60), k=1), None)
    assert outcome.model_version == "pixels-v2" and outcome.hits[0].id == "straddler"
    assert sizes(shards, "c@1") == 11
