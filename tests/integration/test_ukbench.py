"""UKBench (first 1,000 images) through the whole cluster: N-S with and without re-ranking."""

import pytest

from tests.integration.conftest import DATASETS
from visearch import datasets
from visearch.jobs import evaluate, ingest_entries, search_entries

pytestmark = [pytest.mark.integration, pytest.mark.dataset]
UKBENCH = DATASETS / "ukbench1000"


@pytest.mark.skipif(not UKBENCH.exists(), reason=f"{UKBENCH} is absent (shared datasets)")
@pytest.mark.timeout(2700)  # ingest 1,000 + 2,000 searches on 2 cores
def test_ukbench_ns_score(client):
    entries = datasets.ukbench(UKBENCH)
    labels = {e.id: e.label for e in entries}
    ingest_entries(client, "ukbench", entries, batch_size=16)
    reports = {}
    for mode in ("none", "geometric"):
        results = search_entries(client, "ukbench", entries, k=20, rerank=mode)
        reports[mode] = evaluate(results, labels, mode)
        print(mode, reports[mode])
    assert reports["none"].scores.ns_score >= 3.9
    assert reports["geometric"].scores.ns_score >= reports["none"].scores.ns_score
