"""End to end at 100k images: bulk load through the normal upsert path, then search
p50/p99 over 1/2/4 shards x 1/8/32 clients, rerank `none` and `geometric`, with the
embedding + index baseline measured in the same run.

Per shard count, one local stack (visearch.localstack.running_stack, TLS and API keys on):

1. Real images: the first --real images of --dataset (ukbench1000; the bundled
   visearch.demo samples when it is missing) are ingested through the gateway with the
   normal client (`Ingest`: global embedding, local features in S3, metadata).
2. Bulk load: their served embeddings are read back (`Indexer/Fetch`) and synthetic
   vectors are made from them up to --total: near-duplicates (a real embedding plus
   Gaussian noise of relative size U(--noise-min, --noise-max), renormalised) and a
   --random-fraction of random unit vectors. Each synthetic id is routed as the gateway
   routes it (services.common.sharding.shard_of under the collection's shard count) and
   sent with `Indexer/Upsert` to its shard (write-ahead log on, as ingest does), and its
   metadata goes in with RedisMetadataStore.put_images (one transaction per batch). A
   synthetic id carries the sha256 of a real image, so its local features exist in S3
   (features/<type>/...<sha256>.npz) and `geometric` can verify it.
   The stack's exact threshold is set just below the smallest shard's final size, and
   the last --tail vectors per shard go in last, so every shard trains ScaNN once on
   (almost) all its vectors; the bench waits until every shard reports "scann".
3. Baseline (same stack, same query images, one at a time): raw embedding = in-process
   ONNX Runtime decode + resize + model of one query image (threads = all cores, the
   served model's folder); index = `Indexer/Search` of the same query's vector (k=10) on
   every shard in parallel from the bench (the shard scatter-gather alone, over TLS).
   target_ms = 1.2 x (embed_p50 + index_p50) + 5 ms; ratio = none_p50(1 client) / target.
4. Grid: for each mode and client count, C threads each with its own client (own TLS
   channel) issue `Search` (k=10) back to back over the query images until --queries
   (at least 2 per client) are answered; p50/p99 of the client-side latency.

    flock /tmp/visearch-heavy.lock .venv/bin/python bench/e2e_100k.py \
        --shards 1,2,4 --clients 1,8,32 --total 100000

Writes bench/results/e2e_100k.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.imaging import ImageLimits, decode_rgb, sha256_hex  # noqa: E402
from services.common.metadata import ImageMeta, RedisMetadataStore  # noqa: E402
from services.common.model_registry import load_local  # noqa: E402
from services.common.proto_convert import vector_from_proto, vectors_to_proto  # noqa: E402
from services.common.sharding import shard_of  # noqa: E402
from services.embedder.core import GlobalModel, create_session  # noqa: E402
from visearch import datasets, demo, localstack  # noqa: E402
from visearch.client import VisearchClient  # noqa: E402
from visearch.jobs import ingest_entries  # noqa: E402
from visearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = "e2e100k"
K = 10
MAX_IMAGE_BYTES = 20 * 1024 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 2) if values else float("nan")


def real_entries(dataset: Path, count: int, scratch: Path) -> list[datasets.ImageEntry]:
    """The first `count` images of a UKBench-layout folder, else the bundled samples."""
    if (dataset / "groundtruth.csv").exists():
        return datasets.ukbench(dataset)[:count]
    paths = demo.write_samples(scratch / "samples")
    return [datasets.ImageEntry(p.stem, p, "demo") for p in paths[:count]]


def synthetic_ids(total: int) -> list[str]:
    return [f"syn-{i:07d}" for i in range(total)]


def plan_load(
    real_ids: list[str], total: int, shards: int, tail: int
) -> tuple[list[str], list[int], list[int], int]:
    """Synthetic ids in upsert order (the last `tail` per shard at the end), their
    shards, each shard's final size (real + synthetic) and the exact threshold that
    makes every shard train ScaNN once, in its tail."""
    ids = synthetic_ids(max(total - len(real_ids), 0))
    placement = [shard_of(i, shards) for i in ids]
    sizes = Counter(shard_of(i, shards) for i in real_ids)
    sizes.update(placement)
    head_rows: list[int] = []
    tail_rows: list[int] = []
    seen: Counter[int] = Counter()
    synthetic_per_shard = Counter(placement)
    for row, shard in enumerate(placement):
        seen[shard] += 1
        in_tail = seen[shard] > synthetic_per_shard[shard] - tail
        (tail_rows if in_tail else head_rows).append(row)
    order = head_rows + tail_rows
    final = [sizes[s] for s in range(shards)]
    before_tail = [final[s] - min(tail, synthetic_per_shard[s]) for s in range(shards)]
    threshold = min(final)
    if max(before_tail) >= threshold:
        raise RuntimeError(f"shard sizes {final} too uneven for a tail of {tail}")
    return [ids[r] for r in order], [placement[r] for r in order], final, threshold


def synthetic_vectors(
    real: np.ndarray, rows: np.ndarray, args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray]:
    """real: float32 [r, d] unit rows; rows: int64 [n] row numbers of synthetic ids (the
    seed). Returns float32 [n, d] unit vectors and int64 [n] index of the real image each
    one borrows its sha256 from."""
    n, d = len(rows), real.shape[1]
    rng = np.random.default_rng([args.seed, int(rows[0]) if n else 0])
    base = rng.integers(0, len(real), size=n)
    noise = rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    scale = rng.uniform(args.noise_min, args.noise_max, size=(n, 1)).astype(np.float32)
    vectors = real[base] + scale * noise
    random_rows = rng.random(n) < args.random_fraction
    vectors[random_rows] = noise[random_rows]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), base


def fetch_all(stub: indexer_pb2_grpc.IndexerStub, collection: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    token = ""
    while True:
        page = stub.Fetch(
            indexer_pb2.FetchRequest(collection=collection, page_token=token, limit=1000),
            timeout=60,
        )
        for image_id, vector in zip(page.ids, page.vectors, strict=True):
            out[image_id] = vector_from_proto(vector)
        token = page.next_page_token
        if not token:
            return out


def shard_stats(stub: indexer_pb2_grpc.IndexerStub) -> tuple[str, int]:
    response = stub.Stats(indexer_pb2.IndexStatsRequest(collection=COLLECTION), timeout=30)
    for item in response.collections:
        if item.collection == COLLECTION:
            return item.method, int(item.size)
    return "", 0


def bulk_load(
    state: localstack.StackState,
    stubs: list[indexer_pb2_grpc.IndexerStub],
    entries: list[datasets.ImageEntry],
    plan: tuple[list[str], list[int], list[int], int],
    args: argparse.Namespace,
) -> dict[str, object]:
    ids, placement, _, _ = plan
    shards = len(stubs)
    fetched: dict[str, np.ndarray] = {}
    for stub in stubs:
        fetched.update(fetch_all(stub, COLLECTION))
    real_ids = [e.id for e in entries if e.id in fetched]
    if not real_ids:
        raise RuntimeError("no real image is in the index after ingest")
    real = np.stack([fetched[i] for i in real_ids])
    shas = [sha256_hex(e.path.read_bytes()) for e in entries if e.id in fetched]
    store = RedisMetadataStore(state.redis_url)
    stamp = time.time()
    upsert_s = metadata_s = 0.0
    started = time.perf_counter()
    for start in range(0, len(ids), args.batch):
        chunk_ids = ids[start : start + args.batch]
        chunk_shards = placement[start : start + args.batch]
        rows = np.asarray([int(i.split("-")[1]) for i in chunk_ids], dtype=np.int64)
        vectors, base = synthetic_vectors(real, rows, args)
        t0 = time.perf_counter()
        for shard in range(shards):
            positions = [p for p, s in enumerate(chunk_shards) if s == shard]
            if not positions:
                continue
            stubs[shard].Upsert(
                indexer_pb2.UpsertRequest(
                    collection=COLLECTION,
                    ids=[chunk_ids[p] for p in positions],
                    vectors=vectors_to_proto(vectors[positions]),
                    metadata=[common_pb2.ItemMetadata(label="synthetic") for _ in positions],
                ),
                timeout=600,
            )
        t1 = time.perf_counter()
        store.put_images(
            COLLECTION,
            [
                ImageMeta(image_id, shas[int(b)], "synthetic", state.model_version, shard, stamp)
                for image_id, b, shard in zip(chunk_ids, base, chunk_shards, strict=True)
            ],
        )
        upsert_s += t1 - t0
        metadata_s += time.perf_counter() - t1
    load_s = time.perf_counter() - started
    t0 = time.perf_counter()
    methods: list[str] = []
    sizes: list[int] = []
    while time.perf_counter() - t0 < args.scann_wait_s:
        stats = [shard_stats(stub) for stub in stubs]
        methods, sizes = [m for m, _ in stats], [n for _, n in stats]
        if all(m == "scann" for m in methods):
            break
        time.sleep(1.0)
    return {
        "real_vectors": len(real_ids),
        "synthetic_vectors": len(ids),
        "dims": int(real.shape[1]),
        "load_s": round(load_s, 2),
        "upsert_rpc_s": round(upsert_s, 2),
        "put_images_s": round(metadata_s, 2),
        "vectors_per_s": round(len(ids) / load_s, 1) if load_s else None,
        "scann_wait_s": round(time.perf_counter() - t0, 2),
        "shard_methods": methods,
        "shard_sizes": sizes,
        "gallery_images": store.count_images(COLLECTION),
    }


def baseline(
    model: GlobalModel,
    stubs: list[indexer_pb2_grpc.IndexerStub],
    client: VisearchClient,
    images: list[bytes],
    count: int,
) -> dict[str, object]:
    """One at a time, per query image: in-process embedding (decode + resize + model),
    the shards' Search of that vector (all shards in parallel), then the same image's
    gateway Search (rerank none, k=10) — interleaved, so the baseline and the served path
    see the same load on this shared machine."""
    limits = ImageLimits(max_bytes=MAX_IMAGE_BYTES)
    embed_ms: list[float] = []
    index_ms: list[float] = []
    served_ms: list[float] = []
    methods: set[str] = set()
    with ThreadPoolExecutor(max_workers=len(stubs)) as pool:
        for i in range(count + 3):
            data = images[i % len(images)]
            t0 = time.perf_counter()
            vector = model.run(model.preprocess(decode_rgb(data, limits))[None])
            t1 = time.perf_counter()
            request = indexer_pb2.IndexSearchRequest(
                collection=COLLECTION, queries=vectors_to_proto(vector), k=K
            )
            responses = list(pool.map(lambda s, r=request: s.Search(r, timeout=30), stubs))
            t2 = time.perf_counter()
            client.search(COLLECTION, data, k=K, rerank="none")
            t3 = time.perf_counter()
            methods |= {r.method for r in responses}
            if i >= 3:  # warm-up
                embed_ms.append((t1 - t0) * 1000)
                index_ms.append((t2 - t1) * 1000)
                served_ms.append((t3 - t2) * 1000)
    embed_p50, index_p50 = statistics.median(embed_ms), statistics.median(index_ms)
    target = 1.2 * (embed_p50 + index_p50) + 5.0
    return {
        "queries": count,
        "embed_ms_p50": round(embed_p50, 2),
        "embed_ms_p99": pct(embed_ms, 99),
        "index_ms_p50": round(index_p50, 2),
        "index_ms_p99": pct(index_ms, 99),
        "index_methods": sorted(methods),
        "target_ms": round(target, 2),
        "none_interleaved_ms_p50": pct(served_ms, 50),
        "none_interleaved_ms_p99": pct(served_ms, 99),
        "none_interleaved_p50_over_target": round(statistics.median(served_ms) / target, 3),
    }


def run_cell(
    state: localstack.StackState, images: list[bytes], mode: str, clients: int, queries: int
) -> dict[str, object]:
    """`clients` threads, one client each, searching back to back until `queries` are done."""
    total = max(queries, 2 * clients)
    lock = threading.Lock()
    next_query = [0]
    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    errors: list[str] = []
    flags: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    warmup_errors: list[str] = []

    def worker() -> None:
        with localstack.connect(state, timeout_s=300) as client:
            try:  # connect + warm-up; a refusal here (load shedding) is not timed
                client.search(COLLECTION, images[0], k=K, rerank=mode)
            except Exception as error:  # noqa: BLE001 - counted and reported
                with lock:
                    warmup_errors.append(type(error).__name__)
            finally:
                barrier.wait()
            while True:
                with lock:
                    n = next_query[0]
                    next_query[0] += 1
                if n >= total:
                    return
                t0 = time.perf_counter()
                try:
                    result = client.search(COLLECTION, images[n % len(images)], k=K, rerank=mode)
                except Exception as error:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(type(error).__name__)
                    continue
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(elapsed)
                    stages.append(dict(result.timings_ms))
                    flags["partial"] += int(result.partial)
                    flags["rerank_degraded"] += int(result.rerank_degraded)
                    if result.rerank_degraded:
                        reasons[result.rerank_degraded_reason[:80]] += 1
                    flags["short"] += int(len(result.hits) < K)

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    stage_p50 = {
        name: pct([s.get(name, 0.0) for s in stages], 50)
        for name in ("embed", "local", "index", "metadata", "rerank", "total")
    }
    return {
        "mode": mode,
        "clients": clients,
        "queries": len(latencies),
        "errors": Counter(errors),
        "warmup_errors": Counter(warmup_errors),
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        "queries_per_s": round(len(latencies) / wall, 2) if wall else None,
        "gateway_stage_ms_p50": stage_p50,
        "partial": flags["partial"],
        "rerank_degraded": flags["rerank_degraded"],
        "rerank_degraded_reasons": dict(reasons),
        "fewer_than_k_hits": flags["short"],
    }


def run_shards(
    shards: int, entries: list[datasets.ImageEntry], model: GlobalModel, args: argparse.Namespace
) -> dict[str, object]:
    plan = plan_load([e.id for e in entries], args.total, shards, args.tail)
    report: dict[str, object] = {
        "shards": shards,
        "planned_shard_sizes": plan[2],
        "exact_threshold": plan[3],
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    images = [e.path.read_bytes() for e in entries[: args.query_images]]
    with tempfile.TemporaryDirectory(prefix="visearch-e2e100k-") as state_dir:
        t0 = time.perf_counter()
        with localstack.running_stack(
            Path(state_dir), shards=shards, exact_threshold=plan[3], tls=args.tls
        ) as state:
            report["stack_start_s"] = round(time.perf_counter() - t0, 2)
            addresses = [
                next(p.address for p in state.processes if p.name == f"indexer-{s}")
                for s in range(shards)
            ]
            channels = [localstack.grpc_channel(state, a) for a in addresses]
            stubs = [indexer_pb2_grpc.IndexerStub(c) for c in channels]
            try:
                with localstack.connect(state, timeout_s=300) as client:
                    client.create_collection(COLLECTION, default_rerank="none")
                    rate = ingest_entries(client, COLLECTION, entries, batch_size=8)
                report["real_ingest_images_per_s"] = round(rate, 2)
                log(f"{shards} shard(s): ingested {len(entries)} real images ({rate:.1f}/s)")
                report["load"] = bulk_load(state, stubs, entries, plan, args)
                log(f"{shards} shard(s): bulk load {report['load']}")
                with localstack.connect(state, timeout_s=300) as client:
                    report["baseline"] = baseline(
                        model, stubs, client, images, args.baseline_queries
                    )
                log(f"{shards} shard(s): baseline {report['baseline']}")
                cells = []
                for mode in args.modes:
                    for clients in args.clients:
                        queries = args.queries if mode == "none" else args.geometric_queries
                        cell = run_cell(state, images, mode, clients, queries)
                        cells.append(cell)
                        log(f"{shards} shard(s): {json.dumps(cell)}")
                report["cells"] = cells
                one = next((c for c in cells if c["mode"] == "none" and c["clients"] == 1), None)
                if one is not None:
                    target = report["baseline"]["target_ms"]  # type: ignore[index]
                    report["none_1_client_p50_over_target"] = round(one["p50_ms"] / target, 3)
            finally:
                for channel in channels:
                    channel.close()
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/ukbench1000")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--total", type=int, default=100_000, help="gallery size per stack")
    parser.add_argument("--real", type=int, default=200, help="real images ingested per stack")
    parser.add_argument("--shards", type=parse_ints, default=[1, 2, 4])
    parser.add_argument("--clients", type=parse_ints, default=[1, 8, 32])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["none", "geometric"])
    parser.add_argument("--queries", type=int, default=64, help="`none` searches per cell")
    parser.add_argument("--geometric-queries", type=int, default=32)
    parser.add_argument("--baseline-queries", type=int, default=30)
    parser.add_argument("--query-images", type=int, default=100, help="first N real images")
    parser.add_argument("--batch", type=int, default=4000, help="synthetic ids per put_images")
    parser.add_argument("--tail", type=int, default=1500, help="last vectors per shard")
    parser.add_argument("--noise-min", type=float, default=0.4)
    parser.add_argument("--noise-max", type=float, default=1.5)
    parser.add_argument("--random-fraction", type=float, default=0.1)
    parser.add_argument("--scann-wait-s", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--no-tls", dest="tls", action="store_false")
    parser.add_argument(
        "--snapshot-interval-s",
        default="100000",
        help="the shards' periodic snapshot interval (kept out of the timed window)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/e2e_100k.json")
    parser.add_argument(
        "--merge", action="store_true", help="keep --out's other shard counts (split runs)"
    )
    args = parser.parse_args()
    os.environ["VISEARCH_SNAPSHOT_INTERVAL_S"] = args.snapshot_interval_s
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        entries = real_entries(args.dataset, args.real, Path(scratch))
        manifest, model_path = load_local(localstack.find_model_dir(args.models))
        model = GlobalModel(manifest, create_session(model_path, ["CPUExecutionProvider"], 0))
        report: dict[str, object] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(sys.argv),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "model_version": manifest.version,
            "dataset": str(args.dataset) if (args.dataset / "groundtruth.csv").exists() else "demo",
            "real_images": len(entries),
            "total": args.total,
            "tls": args.tls,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "by_shards": {},
        }
        if args.merge and args.out.exists():
            report["by_shards"] = json.loads(args.out.read_text())["by_shards"]
        for shards in args.shards:
            result = run_shards(shards, entries, model, args)
            result["command"] = report["command"]
            result["date"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            report["by_shards"][str(shards)] = result  # type: ignore[index]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out} in {report['wall_s']} s")


if __name__ == "__main__":
    main()
