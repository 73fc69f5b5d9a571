"""`visearch train --apply` on the real stack: fine-tune, publish, re-embed and switch while
searches run, none of them failing."""

import json
import threading

import pytest
from typer.testing import CliRunner

from tests.integration.conftest import DATASETS
from visearch.cli import app
from visearch.client import IngestItem

pytestmark = pytest.mark.integration
COLLECTION = "apply"
GROUPS = 5


def test_train_apply_switches_with_no_failed_search(stack, client, tmp_path) -> None:
    paths = sorted((DATASETS / "ukbench1000" / "images").glob("*.jpg"))[40 : 40 + GROUPS * 4]
    images = {f"a-{p.stem}": p.read_bytes() for p in paths}
    items = [
        IngestItem(image_id, image=data, label=f"g{i // 4}")
        for i, (image_id, data) in enumerate(images.items())
    ]
    client.ingest(COLLECTION, items, create_collection=True)
    before = client.stats(COLLECTION).collection.model_version
    errors: list[BaseException] = []
    searched: list[str] = []
    stop = threading.Event()
    query = next(iter(images.values()))

    def search_loop() -> None:
        while not stop.is_set():
            try:
                searched.append(client.search(COLLECTION, query, k=3, rerank="none").model_version)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

    searcher = threading.Thread(target=search_loop)
    searcher.start()
    args = ["train", "-c", COLLECTION, "--state-dir", str(stack.state_dir), "--apply", "--json",
            "--dims", "16", "--epochs", "2", "--views", "1", "--tail-blocks", "2", "--force",
            "--cache-dir", str(tmp_path / "features")]  # fmt: skip
    try:
        result = CliRunner().invoke(app, args)
    finally:
        stop.set()
        searcher.join()
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["published"] is True
    assert not errors, errors[:3]
    info = client.stats(COLLECTION).collection
    assert info.model_version == summary["version"] != before
    assert set(searched) <= {before, summary["version"]} and searched
    top = client.search(COLLECTION, query, k=1, rerank="none")
    assert top.model_version == summary["version"] and top.hits[0].id == next(iter(images))
    again = CliRunner().invoke(
        app,
        ["train", "-c", COLLECTION, "--state-dir", str(stack.state_dir), "--if-new", "1", "--json"],
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1]) == {
        "up_to_date": True,
        "new_images": 0,
    }
