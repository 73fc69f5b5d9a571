"""Reliability: bad inputs and faults against a real local stack, each followed by an audit.

Starts its own stack (visearch.localstack.running_stack: TLS, API keys, 2 shards, the
supervisor; erasure and the orphan sweep on second-scale timers), seeds a collection with
distinct real photos (the bundled samples cut at different offsets), then:

- Bad inputs: a table of (name, call, expected status). Each case must fail with that
  status and a message that is non-empty and holds no Python repr (`<... at 0x`) nor
  traceback, and must store nothing: the collections, every collection's image count and
  shard sizes (Stats), and the objects in the images, features and uploads buckets are the
  same before and after.
- Faults: while a writer streams ingests (2 images a request) and deletes and a searcher
  searches a seed image, one fault is injected (kill -9 of each service kind, Valkey and
  SeaweedFS, SIGSTOP of a shard, S3 unreachable, a shard killed again while it recovers,
  a shard with many vectors recovering under search); the supervisor restarts what died.
  Once the stack is healthy again: an audit of every id the writer got acknowledged.
  lost: an acknowledged id its own image does not find (top 10, complete answer);
  resurrected: an acknowledged delete that Get or a search still returns; duplicated: an
  id twice in one answer; orphaned: Stats' image count differs from the sum of the shard
  sizes after the orphan sweep's grace; short: an answer without `partial` that has fewer
  than min(k, live images) hits or misses the query's own (never deleted) seed image.
  Every count must be zero.
- A final audit of every acknowledged id of the run (search, Get, GetImage bytes).

Writes bench/results/reliability.json and renders docs/reliability.md from it.

    .venv/bin/python bench/reliability.py               # ~9 minutes on 2 cores
    .venv/bin/python bench/reliability.py --render      # docs/reliability.md from the JSON
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The stack's services read these at start: erasure and the orphan sweep within seconds.
BENCH_ENV = {
    "VISEARCH_ERASE_AFTER_S": "1",
    "VISEARCH_ERASE_INTERVAL_S": "0.5",
    "VISEARCH_ORPHAN_GRACE_S": "3",
    "VISEARCH_ORPHAN_SWEEP_INTERVAL_S": "1",
}
for _name, _value in BENCH_ENV.items():
    os.environ.setdefault(_name, _value)

from services.common.api_keys import generate_key  # noqa: E402
from services.common.errors import NotFoundError, VisearchError  # noqa: E402
from services.common.grpc_client import error_from_rpc  # noqa: E402
from services.common.index_types import IndexOverrides  # noqa: E402
from services.common.metadata import ImageMeta, RedisMetadataStore  # noqa: E402
from services.common.objectstore import S3ObjectStore  # noqa: E402
from services.common.proto_convert import vector_from_proto, vectors_to_proto  # noqa: E402
from services.common.sharding import shard_of  # noqa: E402
from services.common.tls import TlsConfig  # noqa: E402
from services.gateway.query_expansion import QueryExpansion  # noqa: E402
from visearch import demo, localstack  # noqa: E402
from visearch.client import IngestItem, VisearchClient  # noqa: E402
from visearch.local_ca import ensure_local_ca  # noqa: E402
from visearch.v1 import (  # noqa: E402
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    indexer_pb2,
    indexer_pb2_grpc,
)

RESULTS = ROOT / "bench" / "results" / "reliability.json"
DOC = ROOT / "docs" / "reliability.md"
COMMAND = ".venv/bin/python bench/reliability.py"
COLLECTION = "rel"
OTHER = "rel-other"
SEEDS = 12
K = 10
# Between a writer's requests, so that its images last through the fault.
WRITER_PAUSE_S = 0.3
REPR = re.compile(r"<[^>]* at 0x[0-9a-f]+>|Traceback \(most recent call last\)")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


def crops(samples: list[Path], count: int, start: int = 0) -> list[bytes]:
    """Distinct JPEGs: sample photos cut 2 pixels more from the top and left each round."""
    out = []
    for i in range(start, start + count):
        rgb = np.asarray(Image.open(samples[i % len(samples)]).convert("RGB"))
        off = 2 * (i // len(samples))
        buffer = io.BytesIO()
        Image.fromarray(rgb[off:, off:]).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def outcome_of(call: Callable[[], object]) -> tuple[str, str]:
    """(status name, message) of a call: "OK" and "" when it did not fail."""
    try:
        call()
    except VisearchError as exc:
        return exc.status, exc.message
    except grpc.RpcError as exc:
        error = error_from_rpc(exc, "")
        return error.status, error.message
    return "OK", ""


# ---------------------------------------------------------------------------------------
# The stack and what the bench reads of it


@dataclass
class Bench:
    state: localstack.StackState
    client: VisearchClient
    metadata: RedisMetadataStore
    store: S3ObjectStore
    images: list[bytes]  # distinct crops, taken in order by next_images
    seeds: dict[str, bytes] = field(default_factory=dict)
    taken: int = 0
    # Every id acknowledged (and not deleted since) / every acknowledged delete, whole run.
    acknowledged: dict[str, bytes] = field(default_factory=dict)
    deleted: dict[str, bytes] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return Path(self.state.state_dir)

    def next_images(self, count: int) -> list[bytes]:
        out = self.images[self.taken : self.taken + count]
        self.taken += len(out)
        return out

    def process(self, name: str) -> localstack.ProcessInfo:
        state = localstack.StackState.load(self.state_dir)
        assert state is not None
        return localstack.find_process(state, name)

    def stub(self) -> tuple[gateway_pb2_grpc.GatewayStub, list[tuple[str, str]]]:
        """A raw stub (for values the typed client refuses to send) and its auth metadata."""
        channel = localstack.grpc_channel(self.state, self.state.gateway)
        key = localstack.local_api_key(self.state_dir)
        return gateway_pb2_grpc.GatewayStub(channel), [("authorization", f"Bearer {key}")]


def stored_state(bench: Bench) -> dict[str, Any]:
    """What a refused call must leave unchanged."""
    collections = sorted(bench.metadata.list_collections())
    per_collection = {}
    for name in collections:
        stats = bench.client.stats(name, timeout_s=30)
        per_collection[name] = [stats.images, [s.size for s in stats.shards]]
    objects = {
        bucket: sum(1 for _ in bench.store.list(f"{bucket}/"))
        for bucket in ("images", "features", "uploads")
    }
    return {"collections": collections, "stats": per_collection, "objects": objects}


# ---------------------------------------------------------------------------------------
# Bad inputs


@dataclass(frozen=True)
class Case:
    name: str
    call: str  # the RPC, for the table
    expected: str
    run: Callable[[], object]


def bad_input_cases(bench: Bench, tmp: Path, keys: dict[str, str]) -> list[Case]:
    c = bench.client
    seed_id, seed = next(iter(bench.seeds.items()))
    stub, auth = bench.stub()
    good = IngestItem("bad-never-stored", image=seed)
    garbage = b"this is not an image, just some text bytes " * 20
    truncated = seed[: len(seed) // 3]
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 10
    png_header_only = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, format="PNG")  # ~400 Mpx, a few hundred KB
    oversized = b"\xff\xd8\xff" + os.urandom(21 * 1024 * 1024)  # over the 20 MiB limit
    other_sha = bench.client.get(OTHER, "other-0").sha256
    absent_sha = "0" * 64
    many_items = [IngestItem(f"many-{i}", image=garbage) for i in range(257)]
    long_id = "a" * 129

    def ingest(*items: IngestItem, collection: str = COLLECTION, create: bool = True) -> Callable:
        return lambda: c.ingest(collection, list(items), create_collection=create, timeout_s=30)

    def search(image: bytes = seed, collection: str = COLLECTION, **kw: Any) -> Callable:
        kw.setdefault("rerank", "none")
        kw.setdefault("timeout_s", 30)
        return lambda: c.search(collection, image, **kw)

    def keyed(key: str, run: Callable[[VisearchClient], object], **kw: Any) -> Callable:
        def call() -> object:
            with localstack.connect(bench.state, api_key=key, timeout_s=15, **kw) as other:
                return run(other)

        return call

    def raw(method: str, request: object) -> Callable:
        return lambda: getattr(stub, method)(request, metadata=auth, timeout=30)

    other_ca = ensure_local_ca(tmp / "other-ca")
    item = IngestItem
    cases = [
        # Image bytes
        Case("empty image bytes", "Ingest", "INVALID_ARGUMENT", ingest(item("e1"))),
        Case("text bytes as image", "Ingest", "INVALID_ARGUMENT", ingest(item("e2", garbage))),
        Case("truncated JPEG", "Ingest", "INVALID_ARGUMENT", ingest(item("e3", truncated))),
        Case("PDF bytes", "Ingest", "INVALID_ARGUMENT", ingest(item("e4", pdf))),
        Case("PNG header only", "Ingest", "INVALID_ARGUMENT", ingest(item("e5", png_header_only))),
        Case(
            "JPEG magic + 21 MiB noise",
            "Ingest",
            "RESOURCE_EXHAUSTED",
            ingest(item("e6", oversized)),
        ),
        Case(
            "400 Mpx PNG (bomb)",
            "Ingest",
            "RESOURCE_EXHAUSTED",
            ingest(item("e7", bomb.getvalue())),
        ),
        Case(
            "attribute of 2000 characters",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("e8", seed, attributes={"note": "x" * 2000})),
        ),
        Case(
            "one bad image in a good batch",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(good, item("e9", garbage)),
        ),
        Case("search with empty image", "Search", "INVALID_ARGUMENT", search(b"")),
        Case("search with text bytes", "Search", "INVALID_ARGUMENT", search(garbage)),
        Case("search with truncated JPEG", "Search", "INVALID_ARGUMENT", search(truncated)),
        Case("search with 21 MiB image", "Search", "RESOURCE_EXHAUSTED", search(oversized)),
        # Ids
        Case("empty id", "Ingest", "INVALID_ARGUMENT", ingest(item("", seed))),
        Case("129-character id", "Ingest", "INVALID_ARGUMENT", ingest(item(long_id, seed))),
        Case("id with a space", "Ingest", "INVALID_ARGUMENT", ingest(item("a b", seed))),
        Case("id with a slash", "Ingest", "INVALID_ARGUMENT", ingest(item("a/b", seed))),
        Case("id with non-ASCII", "Ingest", "INVALID_ARGUMENT", ingest(item("caf\u00e9", seed))),
        Case("id with a newline", "Ingest", "INVALID_ARGUMENT", ingest(item("a\nb", seed))),
        Case(
            "same id twice in one ingest",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("dup", seed), item("dup", seed)),
        ),
        Case("257 items in one ingest", "Ingest", "INVALID_ARGUMENT", ingest(*many_items)),
        Case("delete no ids", "Delete", "INVALID_ARGUMENT", lambda: c.delete(COLLECTION, [])),
        Case(
            "delete 1001 ids",
            "Delete",
            "INVALID_ARGUMENT",
            lambda: c.delete(COLLECTION, [f"d{i}" for i in range(1001)]),
        ),
        Case(
            "delete a bad id",
            "Delete",
            "INVALID_ARGUMENT",
            lambda: c.delete(COLLECTION, [seed_id, "../x"]),
        ),
        Case(
            "delete the same id twice",
            "Delete",
            "INVALID_ARGUMENT",
            lambda: c.delete(COLLECTION, [seed_id, seed_id]),
        ),
        Case("get a bad id", "Get", "INVALID_ARGUMENT", lambda: c.get(COLLECTION, "a b")),
        Case("get an unknown id", "Get", "NOT_FOUND", lambda: c.get(COLLECTION, "no-such-id")),
        Case(
            "get image of an unknown id",
            "GetImage",
            "NOT_FOUND",
            lambda: c.get_image(COLLECTION, "no-such-id"),
        ),
        # Collections
        Case("search an unknown collection", "Search", "NOT_FOUND", search(collection="nope")),
        Case(
            "ingest, no create, unknown collection",
            "Ingest",
            "NOT_FOUND",
            ingest(good, collection="nope", create=False),
        ),
        Case("stats of an unknown collection", "Stats", "NOT_FOUND", lambda: c.stats("nope")),
        Case(
            "delete in an unknown collection",
            "Delete",
            "NOT_FOUND",
            lambda: c.delete("nope", [seed_id]),
        ),
        Case("empty collection name", "Ingest", "INVALID_ARGUMENT", ingest(good, collection="")),
        Case(
            "collection name with a slash",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(good, collection="a/b"),
        ),
        Case(
            "65-character collection name",
            "CreateCollection",
            "INVALID_ARGUMENT",
            lambda: c.create_collection("c" * 65),
        ),
        Case(
            "collection name starting with '-'",
            "CreateCollection",
            "INVALID_ARGUMENT",
            lambda: c.create_collection("-rel"),
        ),
        Case(
            "collection name with a space",
            "Search",
            "INVALID_ARGUMENT",
            search(collection="my rel"),
        ),
        Case(
            "collection name '..'",
            "Stats",
            "INVALID_ARGUMENT",
            lambda: c.stats(".."),
        ),
        # k, re-rank, query expansion
        Case("k = -1", "Search", "INVALID_ARGUMENT", search(k=-1)),
        Case("k = 1001", "Search", "INVALID_ARGUMENT", search(k=1001)),
        Case("k = 2^31-1", "Search", "INVALID_ARGUMENT", search(k=2**31 - 1)),
        Case(
            "rerank enum 7",
            "Search",
            "INVALID_ARGUMENT",
            raw(
                "Search",
                gateway_pb2.SearchRequest(
                    collection=COLLECTION, image=common_pb2.Image(data=seed), rerank=7
                ),
            ),
        ),
        Case(
            "default_rerank enum 99",
            "CreateCollection",
            "INVALID_ARGUMENT",
            raw(
                "CreateCollection",
                gateway_pb2.CreateCollectionRequest(name="e99", default_rerank=99),
            ),
        ),
        Case(
            "texture re-rank without texture",
            "Search",
            "FAILED_PRECONDITION",
            search(rerank="texture"),
        ),
        Case(
            "query expansion top_n 1000",
            "Search",
            "INVALID_ARGUMENT",
            search(query_expansion=QueryExpansion(top_n=1000)),
        ),
        Case(
            "query expansion alpha -1",
            "Search",
            "INVALID_ARGUMENT",
            search(query_expansion=QueryExpansion(top_n=3, alpha=-1.0)),
        ),
        Case(
            "verified expansion without geometric",
            "Search",
            "INVALID_ARGUMENT",
            search(query_expansion=QueryExpansion(verified=True)),
        ),
        # Object keys
        Case(
            "object key with '..'",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("k1", object_key=f"uploads/{COLLECTION}/../{OTHER}/x.jpg")),
        ),
        Case(
            "object key images/../models",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("k2", object_key="images/../models/x")),
        ),
        Case(
            "object key with leading '/'",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("k3", object_key="/images/x")),
        ),
        Case(
            "object key with a backslash",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("k4", object_key=f"uploads/{COLLECTION}\\..\\x")),
        ),
        Case(
            "object key in the models bucket",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("k5", object_key="models/global/x/manifest.json")),
        ),
        Case(
            "object key in another collection's uploads",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("k6", object_key=f"uploads/{OTHER}/x.jpg")),
        ),
        Case(
            "another collection's image key",
            "Ingest",
            "NOT_FOUND",
            ingest(item("k7", object_key=f"images/{other_sha}")),
        ),
        Case(
            "search by another collection's image key",
            "Search",
            "NOT_FOUND",
            lambda: c.search(COLLECTION, object_key=f"images/{other_sha}", rerank="none"),
        ),
        Case(
            "image key of no stored image",
            "Ingest",
            "NOT_FOUND",
            ingest(item("k8", object_key=f"images/{absent_sha}")),
        ),
        Case(
            "image key that is not a sha256",
            "Ingest",
            "NOT_FOUND",
            ingest(item("k9", object_key="images/not-a-sha")),
        ),
        Case(
            "missing upload",
            "Ingest",
            "NOT_FOUND",
            ingest(item("k10", object_key=f"uploads/{COLLECTION}/missing.jpg")),
        ),
        # Labels, attributes, filters
        Case(
            "label of 300 characters",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("l1", seed, label="x" * 300)),
        ),
        Case(
            "33 attributes",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("l2", seed, attributes={f"a{i}": "v" for i in range(33)})),
        ),
        Case(
            "empty attribute name",
            "Ingest",
            "INVALID_ARGUMENT",
            ingest(item("l3", seed, attributes={"": "v"})),
        ),
        Case(
            "filter label of 300 characters", "Search", "INVALID_ARGUMENT", search(label="x" * 300)
        ),
        Case(
            "filter with 33 attributes",
            "Search",
            "INVALID_ARGUMENT",
            search(attributes={f"a{i}": "v" for i in range(33)}),
        ),
        Case(
            "filter with an empty attribute name",
            "Search",
            "INVALID_ARGUMENT",
            search(attributes={"": "v"}),
        ),
        # Collection settings
        Case(
            "num_leaves 10^8",
            "CreateCollection",
            "INVALID_ARGUMENT",
            lambda: c.create_collection("e-idx1", index=IndexOverrides(num_leaves=10**8)),
        ),
        Case(
            "negative exact_threshold",
            "CreateCollection",
            "INVALID_ARGUMENT",
            lambda: c.create_collection("e-idx2", index=IndexOverrides(exact_threshold=-5)),
        ),
        Case(
            "leaves_to_search > num_leaves",
            "CreateCollection",
            "INVALID_ARGUMENT",
            lambda: c.create_collection(
                "e-idx3", index=IndexOverrides(num_leaves=10, leaves_to_search=20)
            ),
        ),
        Case(
            "rerank_depth 5000",
            "CreateCollection",
            "INVALID_ARGUMENT",
            lambda: c.create_collection("e-depth", rerank_depth=5000),
        ),
        Case(
            "unknown local feature type",
            "CreateCollection",
            "INVALID_ARGUMENT",
            lambda: c.create_collection("e-lf", local_feature_type="sift9"),
        ),
        Case(
            "unknown model version",
            "CreateCollection",
            "NOT_FOUND",
            lambda: c.create_collection("e-model", model_version="no-such-model-v9"),
        ),
        Case(
            "existing collection, other rerank_depth",
            "CreateCollection",
            "ALREADY_EXISTS",
            lambda: c.create_collection(COLLECTION, rerank_depth=33),
        ),
        Case(
            "existing collection, other default_rerank",
            "CreateCollection",
            "ALREADY_EXISTS",
            lambda: c.create_collection(COLLECTION, default_rerank="texture"),
        ),
        Case(
            "existing collection, other index settings",
            "CreateCollection",
            "ALREADY_EXISTS",
            lambda: c.create_collection(COLLECTION, index=IndexOverrides(exact_threshold=77)),
        ),
        # Authentication and roles
        Case(
            "no API key",
            "Ingest",
            "UNAUTHENTICATED",
            keyed("", lambda o: o.ingest(COLLECTION, [good])),
        ),
        Case(
            "malformed API key",
            "Search",
            "UNAUTHENTICATED",
            keyed("not-a-key", lambda o: o.search(COLLECTION, seed, rerank="none")),
        ),
        Case(
            "unknown API key",
            "Ingest",
            "UNAUTHENTICATED",
            keyed(generate_key(), lambda o: o.ingest(COLLECTION, [good])),
        ),
        Case(
            "revoked API key",
            "Ingest",
            "UNAUTHENTICATED",
            keyed(keys["revoked"], lambda o: o.ingest(COLLECTION, [good])),
        ),
        Case(
            "read-only key ingesting",
            "Ingest",
            "PERMISSION_DENIED",
            keyed(keys["reader"], lambda o: o.ingest(COLLECTION, [good])),
        ),
        Case(
            "read-only key deleting",
            "Delete",
            "PERMISSION_DENIED",
            keyed(keys["reader"], lambda o: o.delete(COLLECTION, [seed_id])),
        ),
        Case(
            "other collection's key searching",
            "Search",
            "PERMISSION_DENIED",
            keyed(keys["other"], lambda o: o.search(COLLECTION, seed, rerank="none")),
        ),
        Case(
            "writer key creating a collection",
            "CreateCollection",
            "PERMISSION_DENIED",
            keyed(keys["writer"], lambda o: o.create_collection("e-writer")),
        ),
        Case(
            "writer key ingest creating a collection",
            "Ingest",
            "PERMISSION_DENIED",
            keyed(keys["writer"], lambda o: o.ingest("e-writer", [good])),
        ),
        Case(
            "writer key listing API keys",
            "ListApiKeys",
            "PERMISSION_DENIED",
            keyed(keys["writer"], lambda o: o.list_api_keys()),
        ),
        # Transport
        Case(
            "plaintext client, TLS gateway",
            "Ingest",
            "UNAVAILABLE",
            lambda: _plaintext(bench, good),
        ),
        Case(
            "client trusting another CA",
            "Ingest",
            "UNAVAILABLE",
            lambda: _other_ca(bench, good, str(other_ca.ca_cert)),
        ),
        Case(
            "deadline of 1 ms",
            "Search",
            "DEADLINE_EXCEEDED",
            search(timeout_s=0.001),
        ),
    ]
    return cases


def _plaintext(bench: Bench, item: IngestItem) -> object:
    key = localstack.local_api_key(bench.state_dir)
    with VisearchClient(bench.state.gateway, api_key=key, timeout_s=10) as plain:
        return plain.ingest(COLLECTION, [item])


def _other_ca(bench: Bench, item: IngestItem, ca: str) -> object:
    key = localstack.local_api_key(bench.state_dir)
    with VisearchClient(bench.state.gateway, api_key=key, timeout_s=10, tls=TlsConfig(ca=ca)) as c:
        return c.ingest(COLLECTION, [item])


def run_bad_inputs(bench: Bench, tmp: Path) -> dict[str, Any]:
    c = bench.client
    reader, _ = c.create_api_key("rel-reader", [f"read:{COLLECTION}"])
    writer, _ = c.create_api_key("rel-writer", [f"write:{COLLECTION}"])
    other, _ = c.create_api_key("rel-other", [f"admin:{OTHER}"])
    revoked, info = c.create_api_key("rel-revoked", [f"admin:{COLLECTION}"])
    c.revoke_api_key(info.id)
    keys = {"reader": reader, "writer": writer, "other": other, "revoked": revoked}
    results = []
    for case in bad_input_cases(bench, tmp, keys):
        before = stored_state(bench)
        started = time.perf_counter()
        status, message = outcome_of(case.run)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        after = stored_state(bench)
        clean_message = bool(message.strip()) and not REPR.search(message)
        entry = {
            "name": case.name,
            "call": case.call,
            "expected": case.expected,
            "got": status,
            "message": message[:300],
            "status_ok": status == case.expected,
            "message_ok": clean_message,
            "nothing_stored": before == after,
            "ms": round(elapsed_ms, 1),
        }
        if before != after:
            entry["stored_before"], entry["stored_after"] = before, after
        entry["pass"] = entry["status_ok"] and clean_message and before == after
        results.append(entry)
        mark = "ok " if entry["pass"] else "BAD"
        log(f"{mark} {case.name}: {status} (expected {case.expected}) {message[:90]!r}")
    return {
        "cases": results,
        "total": len(results),
        "passed": sum(r["pass"] for r in results),
    }


# ---------------------------------------------------------------------------------------
# Faults


class Writer(threading.Thread):
    """Ingests 2 new images a request and deletes one acknowledged id every 4th request."""

    def __init__(self, bench: Bench, prefix: str, images: list[bytes]) -> None:
        super().__init__(name=f"writer-{prefix}", daemon=True)
        self.bench, self.prefix, self.images = bench, prefix, images
        self.stop = threading.Event()
        self.acknowledged: dict[str, bytes] = {}
        self.deleted: dict[str, bytes] = {}
        self.unacknowledged: dict[str, bytes] = {}  # outcome unknown: asserted neither way
        self.delete_unknown: dict[str, bytes] = {}
        self.ops: dict[str, Counter[str]] = {"ingest": Counter(), "delete": Counter()}
        self.delete_not_found = 0
        # (id, monotonic start, monotonic end, status) of every delete and ingested id,
        # for short answers.
        self.delete_log: list[tuple[str, float, float, str]] = []
        self.ingest_log: list[tuple[str, float, float, str]] = []
        self.rng = random.Random(prefix)

    def run(self) -> None:
        position = 0
        request = 0
        while not self.stop.is_set() and position + 2 <= len(self.images):
            request += 1
            if request % 4 == 0 and self.acknowledged:
                self._delete()
                continue
            items = [
                IngestItem(f"{self.prefix}-{position + j}", image=self.images[position + j])
                for j in range(2)
            ]
            position += 2
            started = time.monotonic()
            try:
                self.bench.client.ingest(COLLECTION, items, timeout_s=15)
            except VisearchError as exc:
                self.ops["ingest"][exc.status] += 1
                for it in items:
                    self.unacknowledged[it.id] = it.image
                    self.ingest_log.append((it.id, started, time.monotonic(), exc.status))
                continue
            self.ingest_log.extend((it.id, started, time.monotonic(), "OK") for it in items)
            self.ops["ingest"]["OK"] += 1
            for it in items:
                self.acknowledged[it.id] = it.image
            self.stop.wait(WRITER_PAUSE_S)

    def _delete(self) -> None:
        victim = self.rng.choice(sorted(self.acknowledged))
        image = self.acknowledged.pop(victim)
        started = time.monotonic()
        try:
            _, not_found = self.bench.client.delete(COLLECTION, [victim], timeout_s=15)
        except VisearchError as exc:
            self.ops["delete"][exc.status] += 1
            self.delete_unknown[victim] = image
            self.delete_log.append((victim, started, time.monotonic(), exc.status))
            return
        self.delete_log.append((victim, started, time.monotonic(), "OK"))
        self.ops["delete"]["OK"] += 1
        # A retried delete (its first answer lost with a killed gateway) finds it gone.
        self.delete_not_found += len(not_found)
        self.deleted[victim] = image


@dataclass
class Answer:
    partial: bool
    missing: list[int]
    ids: list[str]
    degraded: bool
    query_id: str
    started: float = 0.0
    ended: float = 0.0


class Searcher(threading.Thread):
    """Searches seed images (k = 10) in a loop; every answer is kept for the audit."""

    def __init__(self, bench: Bench, rerank: str = "none") -> None:
        super().__init__(name="searcher", daemon=True)
        self.bench, self.rerank = bench, rerank
        self.stop = threading.Event()
        self.answers: list[Answer] = []
        self.failed: Counter[str] = Counter()

    def run(self) -> None:
        seeds = list(self.bench.seeds.items())
        turn = 0
        while not self.stop.is_set():
            seed_id, image = seeds[turn % len(seeds)]
            turn += 1
            started = time.monotonic()
            try:
                found = self.bench.client.search(
                    COLLECTION, image, k=K, rerank=self.rerank, timeout_s=10
                )
            except VisearchError as exc:
                self.failed[exc.status] += 1
                time.sleep(0.2)
                continue
            self.answers.append(
                Answer(
                    found.partial,
                    found.missing_shards,
                    [h.id for h in found.hits],
                    found.rerank_degraded,
                    seed_id,
                    started,
                    time.monotonic(),
                )
            )


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    inject: Callable[[Bench], None]
    rerank: str = "none"  # the searcher's re-rank mode meanwhile


def kill9(*names: str) -> Callable[[Bench], None]:
    def inject(bench: Bench) -> None:
        for name in names:
            os.kill(bench.process(name).pid, signal.SIGKILL)

    return inject


def sigstop(name: str, seconds: float) -> Callable[[Bench], None]:
    def inject(bench: Bench) -> None:
        pid = bench.process(name).pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    return inject


def kill_while_recovering(name: str) -> Callable[[Bench], None]:
    """kill -9, then kill -9 again as soon as the supervisor has started it once more."""

    def inject(bench: Bench) -> None:
        first = bench.process(name).pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = bench.process(name).pid
            if now != first and localstack.pid_alive(now):
                time.sleep(0.3)  # started, loading its snapshot and log
                os.kill(now, signal.SIGKILL)
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} was not restarted within 60 s")

    return inject


BULK = "rel-bulk"


def load_bulk(bench: Bench, vectors: int) -> None:
    """`vectors` random unit vectors (with metadata) in collection rel-bulk on shard 0, so
    that indexer-0 takes a while to replay its log after a kill -9."""
    bench.client.create_collection(BULK)
    state = localstack.StackState.load(bench.state_dir)
    assert state is not None
    dims = 0
    for name in ("indexer-0", "indexer-1"):
        address = localstack.find_process(state, name).address
        with localstack.grpc_channel(state, address) as channel:
            page = indexer_pb2_grpc.IndexerStub(channel).Fetch(
                indexer_pb2.FetchRequest(collection=COLLECTION, limit=1), timeout=30
            )
            if page.vectors:
                dims = len(vector_from_proto(page.vectors[0]))
                break
    assert dims, "no vector of the seeded collection found"
    ids = [f"b-{i}" for i in range(vectors * 3) if shard_of(f"b-{i}", 2) == 0][:vectors]
    rng = np.random.default_rng(5)
    address = localstack.find_process(state, "indexer-0").address
    with localstack.grpc_channel(state, address) as channel:
        stub = indexer_pb2_grpc.IndexerStub(channel)
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            values = rng.standard_normal((len(chunk), dims)).astype(np.float32)
            values /= np.linalg.norm(values, axis=1, keepdims=True)
            stub.Upsert(
                indexer_pb2.UpsertRequest(
                    collection=BULK, ids=chunk, vectors=vectors_to_proto(values)
                ),
                timeout=120,
            )
            bench.metadata.put_images(
                BULK, [ImageMeta(i, "0" * 64, "", state.model_version, 0, 0.0) for i in chunk]
            )


def faults(bulk_vectors: int) -> list[Fault]:
    def recovering(bench: Bench) -> None:
        kill9("indexer-0")(bench)

    return [
        Fault("kill -9 indexer-0", "a shard process killed", kill9("indexer-0")),
        Fault(
            "SIGSTOP indexer-1 5 s",
            "a shard frozen (SIGSTOP) for 5 s, then SIGCONT",
            sigstop("indexer-1", 5.0),
        ),
        Fault(
            "indexer-1 killed twice",
            "a shard killed, restarted by the supervisor, killed again while recovering",
            kill_while_recovering("indexer-1"),
        ),
        Fault(
            "kill -9 both indexers",
            "every shard killed at once: searches have no shard to answer",
            kill9("indexer-0", "indexer-1"),
        ),
        Fault("kill -9 embedder", "the embedder killed", kill9("embedder")),
        Fault(
            "SIGSTOP embedder 4 s",
            "the embedder frozen for 4 s: ingests and searches wait or run out of time",
            sigstop("embedder", 4.0),
        ),
        Fault(
            "kill -9 verifier",
            "the verifier killed; the searcher re-ranks geometrically meanwhile",
            kill9("verifier"),
            rerank="geometric",
        ),
        Fault("kill -9 gateway", "the gateway killed", kill9("gateway")),
        Fault("kill -9 valkey", "Valkey (metadata, shard logs) killed", kill9("valkey")),
        Fault(
            "SIGSTOP valkey 4 s",
            "Valkey frozen for 4 s: metadata reads and shard log appends hang",
            sigstop("valkey", 4.0),
        ),
        Fault("kill -9 seaweedfs", "the S3 server (SeaweedFS) killed", kill9("seaweedfs")),
        Fault(
            "S3 unreachable 6 s",
            "the S3 server frozen (SIGSTOP) for 6 s: calls to it hang, then SIGCONT",
            sigstop("seaweedfs", 6.0),
        ),
        Fault(
            "recovering shard under search",
            f"indexer-0 holding {bulk_vectors} more vectors killed; searches during its replay",
            recovering,
        ),
    ]


def healthy(bench: Bench) -> bool:
    report = localstack.status(bench.state_dir)
    services = report["services"]
    assert isinstance(services, list)
    if not all(s["alive"] and s.get("serving", True) for s in services):
        return False
    try:
        bench.store.exists("images/health-probe")  # S3 answers
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False
    try:
        stats = bench.client.stats(COLLECTION, timeout_s=5)
        if not all(s.available for s in stats.shards):
            return False
        seed_id, seed = next(iter(bench.seeds.items()))
        found = bench.client.search(
            COLLECTION, seed, k=1, rerank="none", require_complete=True, timeout_s=10
        )
    except VisearchError:
        return False
    return bool(found.hits) and found.hits[0].id == seed_id


def wait_healthy(bench: Bench, timeout_s: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(bench):
            return True
        time.sleep(0.25)
    return False


def duplicated(ids: list[str]) -> int:
    return len(ids) - len(set(ids))


def is_short(answer: Answer, live: int) -> bool:
    """A complete answer with fewer hits than there are, or without its own seed image."""
    if answer.partial:
        return False
    return len(answer.ids) < min(K, live) or answer.query_id not in answer.ids


def audit(
    bench: Bench, acknowledged: dict[str, bytes], deleted: dict[str, bytes]
) -> dict[str, Any]:
    """Searches every acknowledged id's image and every deleted id's image (k = 10)."""
    lost, resurrected, dup, short = [], [], 0, 0
    live = SEEDS  # seeds are never deleted: a lower bound on the collection's size
    for image_id, image in acknowledged.items():
        try:
            found = bench.client.search(
                COLLECTION, image, k=K, rerank="none", require_complete=True, timeout_s=30
            )
        except VisearchError as exc:
            lost.append(f"{image_id} ({exc.status})")
            continue
        ids = [h.id for h in found.hits]
        dup += duplicated(ids)
        short += len(ids) < min(K, live)
        if image_id not in ids:
            lost.append(image_id)
    for image_id, image in deleted.items():
        try:
            bench.client.get(COLLECTION, image_id, timeout_s=30)
            resurrected.append(f"{image_id} (Get)")
            continue
        except NotFoundError:
            pass
        found = bench.client.search(COLLECTION, image, k=K, rerank="none", timeout_s=30)
        ids = [h.id for h in found.hits]
        dup += duplicated(ids)
        if image_id in ids:
            resurrected.append(f"{image_id} (Search)")
    orphaned, orphan_wait_s, sizes = orphans_after_sweep(bench, COLLECTION)
    return {
        "acknowledged_checked": len(acknowledged),
        "deletes_checked": len(deleted),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "resurrected": len(resurrected),
        "resurrected_ids": resurrected[:20],
        "duplicated": dup,
        "orphaned": orphaned,
        "orphan_wait_s": orphan_wait_s,
        "stats": sizes,
        "audit_short": short,
    }


def orphans_after_sweep(
    bench: Bench, collection: str, timeout_s: float = 15.0
) -> tuple[int, float, dict]:
    """|sum of shard sizes - Stats image count| once they agree or timeout_s passed (the
    sweep deletes an orphan seen in two sweeps `VISEARCH_ORPHAN_GRACE_S` apart)."""
    started = time.monotonic()
    while True:
        stats = bench.client.stats(collection, timeout_s=30)
        sizes = [s.size for s in stats.shards]
        gap = abs(sum(sizes) - stats.images)
        elapsed = time.monotonic() - started
        if gap == 0 or elapsed > timeout_s:
            detail = {"images": stats.images, "shard_sizes": sizes}
            return gap, round(elapsed, 1), detail
        time.sleep(0.5)


def run_fault(
    bench: Bench, fault: Fault, images: list[bytes], pre_s: float, post_s: float
) -> dict[str, Any]:
    log(f"fault: {fault.name}")
    prefix = re.sub(r"[^a-z0-9]+", "-", fault.name.lower()).strip("-")
    writer = Writer(bench, prefix, images)
    searcher = Searcher(bench, fault.rerank)
    writer.start()
    searcher.start()
    time.sleep(pre_s)
    injected = time.monotonic()
    error = ""
    try:
        fault.inject(bench)
    except Exception as exc:  # noqa: BLE001 - recorded; the audit still runs
        error = f"injection failed: {exc}"
    injection_s = time.monotonic() - injected
    recovered = wait_healthy(bench)
    recovery_s = time.monotonic() - injected
    time.sleep(post_s)
    writer.stop.set()
    searcher.stop.set()
    writer.join(timeout=120)
    searcher.join(timeout=60)
    if not recovered:
        error = (error + "; " if error else "") + "not healthy within 120 s"
        wait_healthy(bench, 120)
    answers = searcher.answers
    short_answers = [a for a in answers if is_short(a, SEEDS)]
    result = audit(bench, writer.acknowledged, writer.deleted)
    unacked_present = 0
    for image_id in writer.unacknowledged:
        try:
            bench.client.get(COLLECTION, image_id, timeout_s=30)
            unacked_present += 1
        except NotFoundError:
            pass
    result["short"] = len(short_answers) + result.pop("audit_short")
    result["short_examples"] = [
        short_example(a, writer.delete_log, writer.ingest_log, injected) for a in short_answers[:5]
    ]
    result["duplicated"] += sum(duplicated(a.ids) for a in answers)
    bench.acknowledged.update(writer.acknowledged)
    bench.deleted.update(writer.deleted)
    for image_id in [*writer.deleted, *writer.delete_unknown]:
        bench.acknowledged.pop(image_id, None)
    counts = ("lost", "resurrected", "duplicated", "orphaned", "short")
    entry = {
        "name": fault.name,
        "description": fault.description,
        "recovered": recovered,
        "recovery_s": round(recovery_s, 1),
        # How long the injection itself took (a SIGSTOP's pause, a double kill).
        "injection_s": round(injection_s, 1),
        "error": error,
        "ingest": _ops(writer.ops["ingest"]),
        "delete": _ops(writer.ops["delete"]),
        "delete_not_found_on_retry": writer.delete_not_found,
        "search": {
            "answered": len(answers),
            "partial": sum(a.partial for a in answers),
            "missing_shards_seen": sorted({s for a in answers for s in a.missing}),
            "rerank_degraded": sum(a.degraded for a in answers),
            "failed": dict(searcher.failed),
            "rerank": fault.rerank,
        },
        "unacknowledged_ingests_stored": unacked_present,
        "unacknowledged_ingests": len(writer.unacknowledged),
        "audit": result,
        "pass": recovered and not error and all(result[c] == 0 for c in counts),
    }
    log(
        f"  {fault.name}: recovered in {recovery_s:.1f}s; ingest {entry['ingest']}, delete "
        f"{entry['delete']}; searches {len(answers)} ({entry['search']['partial']} partial, "
        f"failed {dict(searcher.failed)}); " + ", ".join(f"{c} {result[c]}" for c in counts)
    )
    return entry


def short_example(
    answer: Answer,
    deletes: list[tuple[str, float, float, str]],
    ingests: list[tuple[str, float, float, str]],
    injected: float,
) -> dict[str, Any]:
    """A short answer, its time relative to the injection, the deletes that had started
    before it ended (metadata goes first: a deleted id still on a shard is dropped) and the
    ingests in flight meanwhile (vectors are written before the metadata commit)."""
    return {
        "query_id": answer.query_id,
        "hits": len(answer.ids),
        "ids": answer.ids,
        "partial": answer.partial,
        "at_s": round(answer.started - injected, 2),
        "deletes_started_before": [
            {
                "id": image_id,
                "shard": shard_of(image_id, 2),
                "started_s": round(start - injected, 2),
                "ended_s": round(end - injected, 2),
                "status": status,
            }
            for image_id, start, end, status in deletes
            if start <= answer.ended
        ],
        "ingests_in_flight": [
            {
                "id": image_id,
                "shard": shard_of(image_id, 2),
                "started_s": round(start - injected, 2),
                "ended_s": round(end - injected, 2),
                "status": status,
            }
            for image_id, start, end, status in ingests
            if start <= answer.ended and end >= answer.started
        ],
    }


def _ops(counter: Counter[str]) -> dict[str, Any]:
    return {
        "attempted": sum(counter.values()),
        "acknowledged": counter.get("OK", 0),
        "failed": {k: v for k, v in counter.items() if k != "OK"},
    }


def probe_delete_while_shard_down(bench: Bench) -> dict[str, Any]:
    """A deterministic check of one kind of short answer: an id deleted while its shard is
    down loses its metadata (the delete's first step) but keeps its vector on the shard
    until the orphan sweep; searches must still answer k hits (the gateway asks the shards
    for more and refills, GatewayCore._live_top; before that, k - 1 hits without
    `partial`). The supervisor is paused (SIGSTOP) so that the
    shard stays down during the delete; the bench restarts it."""
    image_id = next(f"probe-{i}" for i in range(100) if shard_of(f"probe-{i}", 2) == 0)
    (image,) = bench.next_images(1)
    bench.client.ingest(COLLECTION, [IngestItem(image_id, image=image)], timeout_s=60)
    state = localstack.StackState.load(bench.state_dir)
    assert state is not None and state.supervisor is not None
    supervisor = state.supervisor.pid
    shard = localstack.find_process(state, "indexer-0").pid
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(shard, signal.SIGKILL)
        while localstack.pid_alive(shard):
            time.sleep(0.05)
        delete_status, delete_message = outcome_of(
            lambda: bench.client.delete(COLLECTION, [image_id], timeout_s=3)
        )
        get_status, _ = outcome_of(lambda: bench.client.get(COLLECTION, image_id, timeout_s=10))
        localstack.restart(bench.state_dir, "indexer-0", only_if_dead=True)
    finally:
        os.kill(supervisor, signal.SIGCONT)
    wait_healthy(bench)
    restarted = time.monotonic()
    samples = []
    while time.monotonic() - restarted < 30:
        found = bench.client.search(COLLECTION, image, k=K, rerank="none", timeout_s=30)
        ids = [h.id for h in found.hits]
        samples.append(
            {
                "at_s": round(time.monotonic() - restarted, 2),
                "hits": len(ids),
                "partial": found.partial,
                "deleted_id_returned": image_id in ids,
            }
        )
        if len(ids) >= K and len(samples) > 1:
            break
        time.sleep(0.5)
    short = [x for x in samples if x["hits"] < K and not x["partial"]]
    return {
        "name": "delete while its shard is down",
        "description": " ".join(
            (probe_delete_while_shard_down.__doc__ or "").split(". ")[0].split()
        ),
        "id": image_id,
        "delete": f"{delete_status}: {delete_message[:160]}",
        "get_after_delete": get_status,
        "searches": samples,
        "short_answers": len(short),
        "short_for_s": short[-1]["at_s"] if short else 0.0,
        "reproduced": bool(short),
    }


def final_audit(bench: Bench) -> dict[str, Any]:
    """Every id acknowledged in the run (and not deleted): found by its image, Get, and its
    original bytes from GetImage; every acknowledged delete: gone."""
    result = audit(bench, {**bench.seeds, **bench.acknowledged}, bench.deleted)
    wrong_bytes = []
    for image_id, image in {**bench.seeds, **bench.acknowledged}.items():
        try:
            if bench.client.get_image(COLLECTION, image_id, timeout_s=30) != image:
                wrong_bytes.append(image_id)
        except VisearchError as exc:
            wrong_bytes.append(f"{image_id} ({exc.status})")
    result["short"] = result.pop("audit_short")
    result["image_bytes_missing"] = len(wrong_bytes)
    result["image_bytes_missing_ids"] = wrong_bytes[:20]
    return result


# ---------------------------------------------------------------------------------------
# Run


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp_name:
        tmp = Path(tmp_name)
        samples = demo.write_samples(tmp / "samples")
        per_fault = args.writes_per_fault
        fault_list = [
            f
            for f in faults(args.bulk_vectors)
            if not args.only or any(word in f.name for word in args.only.split(","))
        ]
        images = crops(samples, SEEDS + 2 + per_fault * len(fault_list))
        log("starting the stack (TLS, API keys, 2 shards, supervisor)")
        with localstack.running_stack(tmp / "stack", shards=2, tls=True) as state:
            log(f"stack up in {time.monotonic() - started:.0f}s")
            with localstack.connect(state, timeout_s=60) as client:
                bench = Bench(
                    state,
                    client,
                    RedisMetadataStore(state.redis_url),
                    S3ObjectStore(state.s3_endpoint, state.s3_access_key, state.s3_secret_key),
                    images,
                )
                client.create_collection(COLLECTION, rerank_depth=12)
                seeds = bench.next_images(SEEDS)
                client.ingest(
                    COLLECTION,
                    [IngestItem(f"seed-{i}", image=img) for i, img in enumerate(seeds)],
                    timeout_s=120,
                )
                bench.seeds = {f"seed-{i}": img for i, img in enumerate(seeds)}
                client.ingest(OTHER, [IngestItem("other-0", image=bench.next_images(1)[0])])
                log("seeded; bad inputs")
                bad = (
                    {"cases": [], "total": 0, "passed": 0}
                    if args.skip_bad
                    else run_bad_inputs(bench, tmp)
                )
                log(f"bad inputs: {bad['passed']}/{bad['total']} pass")
                fault_results = []
                for fault in fault_list:
                    if fault.name == "recovering shard under search":
                        log(f"loading {args.bulk_vectors} vectors onto indexer-0")
                        load_bulk(bench, args.bulk_vectors)
                    fault_results.append(
                        run_fault(
                            bench, fault, bench.next_images(per_fault), args.pre_s, args.post_s
                        )
                    )
                log("probe: delete while its shard is down")
                probe = probe_delete_while_shard_down(bench)
                log(f"  probe: {probe['short_answers']} short answers; {probe['searches'][:3]}")
                log("final audit")
                final = final_audit(bench)
                restarts = {
                    p.name: p.restarts
                    for p in (localstack.StackState.load(bench.state_dir) or state).processes
                }
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": COMMAND,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "shards": 2,
            "tls": True,
            "auth": "required",
            "seeds": SEEDS,
            "k": K,
            "writes_per_fault": per_fault,
            "pre_fault_s": args.pre_s,
            "post_recovery_s": args.post_s,
            "bulk_vectors": args.bulk_vectors,
            "env": BENCH_ENV,
        },
        "bad_inputs": bad,
        "faults": fault_results,
        "final_audit": final,
        "probes": [probe],
        "process_restarts": restarts,
        "wall_s": round(time.monotonic() - started, 1),
    }


# ---------------------------------------------------------------------------------------
# Render


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(report: dict[str, Any]) -> str:
    bad, fault_list, final = report["bad_inputs"], report["faults"], report["final_audit"]
    counts = ("lost", "resurrected", "duplicated", "orphaned", "short")
    totals = {c: sum(f["audit"][c] for f in fault_list) + final[c] for c in counts}
    faults_passed = sum(f["pass"] for f in fault_list)
    settings = report["settings"]
    machine = report["machine"]
    lines = [
        "# Reliability: bad inputs and faults",
        "",
        f"Written by `bench/reliability.py` from `bench/results/reliability.json` "
        f"({report['generated_at']}); do not edit by hand. Reproduce with "
        f"`{report['command']}` (about {report['wall_s'] / 60:.0f} minutes here), then "
        f"`{report['command']} --render` rewrites this page from the JSON.",
        "",
        "The bench starts its own local stack (`visearch.localstack.running_stack`: Valkey, "
        "SeaweedFS S3, embedder, verifier, 2 indexer shards, gateway, TLS on every hop, API "
        "keys required, the supervisor restarting what dies) with erasure and the orphan sweep "
        f"on second-scale timers ({', '.join(f'`{k}={v}`' for k, v in settings['env'].items())}), "
        f"and seeds collection `rel` with {settings['seeds']} distinct photos (the bundled "
        "samples cut at different offsets) that are never deleted.",
        "",
        "## Summary",
        "",
        f"- Bad inputs: **{bad['passed']} / {bad['total']}** answered with the expected status, "
        "a readable message and nothing stored.",
        f"- Faults: **{faults_passed} / {len(fault_list)}** recovered with a clean audit.",
        "- Audit totals over all faults and the final audit: "
        + ", ".join(f"{c} **{totals[c]}**" for c in counts)
        + f"; original bytes missing **{final['image_bytes_missing']}**.",
        f"- Machine: {machine['cpus']} CPUs ({machine['platform']}), load average before / "
        f"after {machine['load_before']} / {machine['load_after']}; the recovery times depend "
        "on it, the counts must not.",
        "",
        "## Bad inputs",
        "",
        "Each case must fail with the expected status, with a non-empty message holding no "
        "Python repr (`<... at 0x...>`) or traceback, and must store nothing: the list of "
        "collections, every collection's image count and shard sizes (Stats) and the number "
        "of objects in the images, features and uploads buckets are compared before and "
        "after.",
        "",
        "| case | call | expected | got | message ok | nothing stored | message (start) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in bad["cases"]:
        got = case["got"] if case["status_ok"] else f"**{case['got']}**"
        lines.append(
            f"| {_cell(case['name'])} | {case['call']} | {case['expected']} | {got} | "
            f"{'yes' if case['message_ok'] else '**no**'} | "
            f"{'yes' if case['nothing_stored'] else '**no**'} | "
            f"{_cell(case['message'][:110])} |"
        )
    lines += [
        "",
        "## Faults",
        "",
        f"Each fault runs while a writer streams ingests ({settings['writes_per_fault']} new "
        "images per fault, 2 per request) and deletes (every 4th request deletes an "
        "acknowledged id) and a searcher searches the seed images (k = "
        f"{settings['k']}). The fault is injected {settings['pre_fault_s']:g} s into the "
        "stream; recovery is the time from the injection (a SIGSTOP's pause included) until "
        "every process serves, S3 answers, Stats sees every shard and a `require_complete` "
        "search finds its seed; the stream runs "
        f"{settings['post_recovery_s']:g} s more. Then the audit:",
        "",
        "- **lost**: an acknowledged id that a complete search with its own image (top "
        f"{settings['k']}) does not return;",
        "- **resurrected**: an acknowledged delete that Get or a search still returns;",
        "- **duplicated**: an id twice in one answer (the searcher's and the audit's);",
        "- **orphaned**: the difference between Stats' image count and the sum of the shard "
        "sizes, once the orphan sweep had its grace period (up to 15 s);",
        "- **short**: an answer without `partial` that has fewer than min(k, live images) "
        "hits or lacks the query's own seed image.",
        "",
        "A failed ingest or delete (not acknowledged) is asserted neither way; the table "
        "shows how many unacknowledged ingests were nonetheless stored (all-or-nothing: "
        "the whole request or none of it).",
        "",
        "| fault | recovery s | ingests ok / tried | ingest failures | deletes ok / tried "
        "| searches (partial, degraded) | search failures | lost | resurrected | duplicated "
        "| orphaned | short | pass |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in fault_list:
        a, s = f["audit"], f["search"]
        lines.append(
            f"| {_cell(f['name'])} | {f['recovery_s']:.1f} | "
            f"{f['ingest']['acknowledged']} / {f['ingest']['attempted']} | "
            f"{_failures(f['ingest']['failed'])} | "
            f"{f['delete']['acknowledged']} / {f['delete']['attempted']} | "
            f"{s['answered']} ({s['partial']}, {s['rerank_degraded']}) | "
            f"{_failures(s['failed'])} | "
            + " | ".join(_count(a[c]) for c in counts)
            + f" | {'yes' if f['pass'] else '**no**'} |"
        )
    lines += ["", "What each fault is:", ""]
    for f in fault_list:
        note = f" Problem: {f['error']}." if f["error"] else ""
        lines.append(
            f"- **{f['name']}**: {f['description']}. Shards missing from partial answers: "
            f"{f['search']['missing_shards_seen'] or 'none'}; unacknowledged ingests stored: "
            f"{f['unacknowledged_ingests_stored']} of {f['unacknowledged_ingests']}; orphan "
            f"check settled after {f['audit']['orphan_wait_s']} s.{note}"
        )
    problems = [f for f in fault_list if not f["pass"]]
    if problems:
        lines += [
            "",
            "### Failed audits",
            "",
            "Times are seconds from the injection; a short answer lists the writer's deletes "
            "that had started before it ended and the ingests in flight during it. These "
            "counts depend on timing and vary from run to run; the probe below reproduces "
            "the mechanism deterministically.",
            "",
        ]
        for f in problems:
            a = f["audit"]
            parts = [
                f"lost {a['lost_ids']}" if a["lost"] else "",
                f"resurrected {a['resurrected_ids']}" if a["resurrected"] else "",
                f"orphaned {a['orphaned']} (Stats {a['stats']})" if a["orphaned"] else "",
                f"duplicated {a['duplicated']}" if a["duplicated"] else "",
                f"short {a['short']} (the first {len(a['short_examples'])} below)"
                if a["short"]
                else "",
                f["error"],
            ]
            lines.append(f"- **{f['name']}**: " + "; ".join(p for p in parts if p))
            for x in a["short_examples"]:
                lines.append(f"  - short: {_short(x)}")
    for probe in report.get("probes", []):
        lines += [
            "",
            f"## Probe: {probe['name']}",
            "",
            f"{probe['description']}. With the supervisor paused, indexer-0 is killed, id "
            f"`{probe['id']}` (on shard 0) is deleted (answer: {_cell(probe['delete'])}; Get "
            f"afterwards: {probe['get_after_delete']}), the shard is restarted, and its "
            f"image is searched (k = {settings['k']}) every 0.5 s until a full answer comes "
            f"back. Short answers without `partial`: **{probe['short_answers']}**, for "
            f"{probe['short_for_s']} s after the restart (the orphan sweep's grace here is "
            f"{settings['env']['VISEARCH_ORPHAN_GRACE_S']} s; 600 s by default).",
            "",
            "| s after restart | hits | partial | deleted id returned |",
            "| --- | --- | --- | --- |",
        ]
        for x in probe["searches"]:
            lines.append(
                f"| {x['at_s']} | {x['hits']} | {x['partial']} | {x['deleted_id_returned']} |"
            )
        if probe["reproduced"]:
            lines += [
                "",
                "Why: `GatewayCore.search` (services/gateway/core.py) merges the shards' top k, "
                "then drops the hits that have no metadata (deleted ids, ingests not yet "
                "committed) and does not ask the shards for more, so the answer is short while "
                "such a vector is among the best k. A delete removes the metadata first; when "
                "the shard is down it keeps the vector until the orphan sweep deletes it "
                "(`VISEARCH_ORPHAN_GRACE_S`, 600 s by default, plus a sweep interval). The same "
                "drop explains the short answers of the faults above that follow a delete "
                "that failed `UNAVAILABLE`. A fix: ask the shards for k plus a margin (or ask "
                "again when hits were dropped), or retry the shard delete in the background "
                "instead of waiting for the sweep.",
            ]
    lines += [
        "",
        "## Final audit",
        "",
        f"After the last fault, every id acknowledged in the run and not deleted "
        f"({final['acknowledged_checked']}, seeds included) is searched with its image, and "
        f"its original bytes are read back with GetImage; every acknowledged delete "
        f"({final['deletes_checked']}) is looked up with Get and searched.",
        "",
        "| lost | resurrected | duplicated | orphaned | short | bytes missing or wrong |",
        "| --- | --- | --- | --- | --- | --- |",
        "| "
        + " | ".join(_count(final[c]) for c in counts)
        + f" | {_count(final['image_bytes_missing'])} |",
        "",
        "Process restarts over the run (supervisor and the bench): "
        + ", ".join(f"{k} {v}" for k, v in report["process_restarts"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def _short(example: dict[str, Any]) -> str:
    def ops(entries: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"`{e['id']}` (shard {e['shard']}, {e['started_s']}..{e['ended_s']} s, {e['status']})"
            for e in entries
        )

    deletes = example.get("deletes_started_before", [])[-3:]
    ingests = example.get("ingests_in_flight", [])
    return (
        f"query `{example['query_id']}` at {example['at_s']} s got {example['hits']} hits, "
        f"partial false; last deletes before it: {ops(deletes) or 'none'}; ingests in "
        f"flight: {ops(ingests) or 'none'}"
    )


def _failures(failed: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "-"


def _count(value: int) -> str:
    return str(value) if value == 0 else f"**{value}**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--render", action="store_true", help="only rewrite the doc")
    parser.add_argument("--writes-per-fault", type=int, default=32)
    parser.add_argument("--only", default="", help="faults whose names contain one of these")
    parser.add_argument("--skip-bad", action="store_true", help="no bad-input cases")
    parser.add_argument("--pre-s", type=float, default=4.0)
    parser.add_argument("--post-s", type=float, default=3.0)
    parser.add_argument("--bulk-vectors", type=int, default=30_000)
    args = parser.parse_args()
    if not args.render:
        report = run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
    report = json.loads(args.out.read_text(encoding="utf-8"))
    args.doc.write_text(render(report), encoding="utf-8")
    log(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
