"""Database-side augmentation through the real stack: a pass over gRPC, searches on the
augmented copy, writes after it reaching the copy at once, bad input, turning it off."""

import io

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidArgumentError
from visearch.client import IngestItem

pytestmark = pytest.mark.integration
COLLECTION = "dba-stack"


def photo(group: int, member: int) -> bytes:
    """A 128x128 JPEG: a group's smooth colour pattern plus member-specific noise."""
    coarse = np.random.default_rng(group).integers(0, 255, (4, 4, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((128, 128), Image.BICUBIC), np.float32)
    noise = np.random.default_rng(100 + 7 * group + member).normal(0, 25, base.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gallery(client):
    items = [
        IngestItem(f"g{g}-m{m}", image=photo(g, m), label=f"G{g}")
        for g in range(4)
        for m in range(3)
    ]
    client.ingest(COLLECTION, items, create_collection=True)
    return items


def top(client, image: bytes, k: int = 12):
    return client.search(COLLECTION, image, k=k, rerank="none").hits


def test_a_pass_serves_augmented_vectors_and_later_writes_reach_them(client, gallery):
    before = top(client, photo(1, 0))[0]
    assert before.id == "g1-m0" and before.score == pytest.approx(1.0, abs=1e-3)
    steps = list(client.augment_database(COLLECTION, 2, drop_grace_s=0))
    assert [s.phase for s in steps][-2:] == ["published", "done"]
    assert steps[-1].done == steps[-1].total == len(gallery)
    info = client.stats(COLLECTION).collection
    assert (info.dba_top_n, info.dba_pass, info.dba_pending_pass) == (2, 1, 0)
    after = top(client, photo(1, 0))[0]
    # its own stored vector is now mixed with its two neighbours: no longer identical
    assert after.id.startswith("g1-") and after.score < 0.999
    client.ingest(COLLECTION, [IngestItem("late", image=photo(9, 0), label="G9")])
    hit = top(client, photo(9, 0))[0]
    assert hit.id == "late" and hit.score == pytest.approx(1.0, abs=1e-3)
    client.delete(COLLECTION, ["late", "g2-m1"])
    for image in (photo(9, 0), photo(2, 1)):
        assert not {"late", "g2-m1"} & {h.id for h in top(client, image)}


def test_bad_settings_get_invalid_argument(client, gallery):
    with pytest.raises(InvalidArgumentError, match="top_n must be in 0..50"):
        list(client.augment_database(COLLECTION, 51))


def test_turning_it_off_serves_the_vectors_again(client, gallery):
    assert [s.phase for s in client.augment_database(COLLECTION, 0)] == ["off"]
    assert client.stats(COLLECTION).collection.dba_pass == 0
    hit = top(client, photo(3, 2))[0]
    assert hit.id == "g3-m2" and hit.score == pytest.approx(1.0, abs=1e-3)
