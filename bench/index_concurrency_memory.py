"""One shard's search concurrency and memory, against the previous behaviour in the same run.

(a) Searches/s on one VectorIndex from 1, 2 and 4 threads (one query per call, as the
    gateway sends them), exact and ScaNN: the current readers-writer lock against the old
    single lock (the same index with every search wrapped in one global lock).
    Also recall@10 of the ScaNN recipe (int8 re-ordering + exact re-score of the final
    candidates from the shard's matrix) against the previous float32 re-ordering.
(b) Memory, each in a fresh process: RSS growth per vector after building a ScaNN index
    (upsert + training), and the peak RSS growth while recovering it from a snapshot
    (ObjectSnapshotStore.latest decoding the .npz + VectorIndex.load with the serialized
    searcher), both divided by the raw float32 vector bytes; "previous" runs the code of
    the last commit (git show HEAD:services/indexer/...) on its own snapshot.
(c) Bytes per image: vectors (raw, in the shard's memory, in the snapshot), metadata
    (Redis MEMORY USAGE of img:* hashes written by RedisMetadataStore on a local Valkey,
    and used_memory growth including the ids/refs sets) and stored RootSIFT features
    (LocalFeatures.to_npz size for ukbench images).

    flock /tmp/visearch-heavy.lock .venv/bin/python bench/index_concurrency_memory.py
Writes bench/results/index_concurrency_memory.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OLD_PACKAGE = "visearch_prev_index"
OLD_MODULES = ("vector_index", "fresh_rows", "searcher_files")


# ---------------------------------------------------------------- helpers


def unit_vectors(n: int, dims: int, seed: int) -> np.ndarray:
    """A clustered float32 [n, dims] set of unit vectors (ANN-shaped, not uniform)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 200), dims), dtype=np.float32)
    points = centres[rng.integers(0, len(centres), n)]
    points += 0.6 * rng.standard_normal((n, dims), dtype=np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Peak RSS between start() and stop(), sampled every millisecond (also VmHWM after a
    reset through /proc/self/clear_refs where allowed)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def start(self) -> PeakRss:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.peak = rss()
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        if self._hwm_reset:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
        return self.peak


def previous_modules(workdir: Path) -> Path:
    """Writes the last commit's index modules as package OLD_PACKAGE; returns its parent."""
    package = workdir / OLD_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in OLD_MODULES:
        source = subprocess.run(
            ["git", "show", f"HEAD:services/indexer/{name}.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for other in OLD_MODULES:
            source = source.replace(f"services.indexer.{other}", f"{OLD_PACKAGE}.{other}")
        (package / f"{name}.py").write_text(source)
    return workdir


def index_module(impl: str, workdir: Path):  # noqa: ANN201 - a module
    if impl == "new":
        from services.indexer import vector_index

        return vector_index
    sys.path.insert(0, str(previous_modules(workdir)))
    import importlib

    return importlib.import_module(f"{OLD_PACKAGE}.vector_index")


# ---------------------------------------------------------------- (a) concurrency


def throughput(search, queries: np.ndarray, threads: int, seconds: float) -> float:
    """Searches/s of `search(query [1, d])` from `threads` threads for `seconds`."""
    stop = threading.Event()
    counts = [0] * threads

    def worker(slot: int) -> None:
        i = slot
        while not stop.is_set():
            search(queries[i % len(queries) : i % len(queries) + 1])
            counts[slot] += 1
            i += threads

    workers = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in workers:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def concurrency(n: int, dims: int, seconds: float) -> dict:
    from services.indexer import vector_index
    from services.indexer.vector_index import VectorIndex

    data = unit_vectors(n, dims, seed=1)
    queries = unit_vectors(512, dims, seed=2)
    out: dict = {"n": n, "dims": dims, "seconds_per_point": seconds, "cores": os.cpu_count()}
    for method, threshold in (("exact", 10**9), ("scann", 1000)):
        index = VectorIndex(dims, exact_threshold=threshold, background_builds=False)
        index.upsert([f"id{i}" for i in range(n)], data)
        assert index.method == method
        global_lock = threading.Lock()

        def single_lock(query: np.ndarray, index=index, lock=global_lock) -> None:
            with lock:
                index.search(query, 10)

        rows = []
        for threads in (1, 2, 4):
            # Alternating order so drift on a shared machine hits both alike.
            old = throughput(single_lock, queries, threads, seconds)
            new = throughput(lambda q, index=index: index.search(q, 10), queries, threads, seconds)
            rows.append(
                {
                    "threads": threads,
                    "single_lock_qps": round(old, 1),
                    "rwlock_qps": round(new, 1),
                    "speedup": round(new / old, 3),
                }
            )
        one = rows[0]["rwlock_qps"]
        for row in rows:
            row["scaling_vs_1_thread"] = round(row["rwlock_qps"] / one, 3)
        out[method] = rows
        if method == "scann":
            out["scann_recall_at_10"] = recall_int8_vs_float(data, queries[:200], index)
        del index
    out["reorder_type"] = vector_index.REORDER_TYPE.name
    out["exact_product_slots"] = vector_index._blas_product_slots()
    return out


def recall_int8_vs_float(data: np.ndarray, queries: np.ndarray, index) -> dict:  # noqa: ANN001
    """recall@10 against brute force: the index as served (int8 re-order + exact re-score)
    and a searcher of the previous recipe (float32 re-order) on the same data."""
    from services.indexer import vector_index

    truth = np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :10]
    truth_ids = [{f"id{i}" for i in row} for row in truth]
    served = index.search(queries, 10)[0]
    recall_new = np.mean(
        [len({h.id for h in got} & want) / 10 for got, want in zip(served, truth_ids, strict=True)]
    )
    saved = vector_index.REORDER_TYPE
    vector_index.REORDER_TYPE = vector_index.ReorderType.FLOAT32
    try:
        searcher = vector_index.build_searcher(data, [f"id{i}" for i in range(len(data))])
    finally:
        vector_index.REORDER_TYPE = saved
    params = vector_index.scann_params_for(len(data))
    ids, _ = searcher.search_batched(
        queries, final_num_neighbors=10, pre_reorder_num_neighbors=params.reorder,
        leaves_to_search=params.leaves_to_search,
    )  # fmt: skip
    recall_old = np.mean(
        [len({str(i) for i in got} & want) / 10 for got, want in zip(ids, truth_ids, strict=True)]
    )
    return {
        "int8_reorder_exact_rescore": round(float(recall_new), 4),
        "float32_reorder": round(float(recall_old), 4),
    }


# ---------------------------------------------------------------- (b) memory (children)


class _FileStore:
    """ObjectStore.get over a folder (the snapshot files a child reads)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def get(self, key: str) -> bytes:
        return (self._folder / key.replace("/", "__")).read_bytes()

    def put(self, key: str, data: bytes) -> None:
        (self._folder / key.replace("/", "__")).write_bytes(data)

    def list(self, prefix: str) -> list[str]:
        return []

    def delete(self, key: str) -> None:
        pass


class _Pointer:
    """The one Redis pointer ObjectSnapshotStore reads and writes."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def get(self, key: str) -> bytes | None:
        return self._path.read_bytes() if self._path.exists() else None

    def set(self, key: str, value: str, get: bool = False) -> None:
        self._path.write_text(value)


def child_build(impl: str, n: int, dims: int, folder: Path) -> dict:
    """Builds an index of n vectors (ScaNN, trained in this thread), measures RSS growth,
    then writes its snapshot (vectors .npz + serialized searcher) into `folder`."""
    import tracemalloc

    from services.common.index_types import ItemMeta
    from services.indexer.durability import ObjectSnapshotStore, Snapshot

    module = index_module(impl, folder)
    data = unit_vectors(n, dims, seed=1)
    ids = [f"img-{i:08d}" for i in range(n)]
    metadata = [ItemMeta(f"label{i % 100}", {}) for i in range(n)]
    before = rss()
    tracemalloc.start()
    index = module.VectorIndex(dims, exact_threshold=1000, background_builds=False)
    for start in range(0, n, 1000):  # ingest-sized batches
        stop = start + 1000
        index.upsert(ids[start:stop], data[start:stop], metadata[start:stop])
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    after = rss()
    assert index.method == "scann"
    exported = index.export()
    searcher = index.export_searcher()
    store = ObjectSnapshotStore(_FileStore(folder), "snap", _Pointer(folder / "pointer"), 0)
    store.save("c", Snapshot("1-0", *exported, searcher=searcher))
    snapshot_bytes = sum(p.stat().st_size for p in folder.glob("snap__*"))
    vectors_npz = sum(p.stat().st_size for p in folder.glob("snap__*vectors.npz"))
    return {
        "rss_growth": after - before,
        "traced_python_numpy": traced,
        "matrix_bytes": int(index._matrix.nbytes),
        "snapshot_bytes": snapshot_bytes,
        "snapshot_vectors_npz_bytes": vectors_npz,
        "scann_files": {name: len(data) for name, data in searcher.files.items()},
    }


def child_recover(impl: str, dims: int, folder: Path) -> dict:
    """Recovers the snapshot in `folder` as Shard.recover does; peak RSS growth."""
    from services.indexer.durability import ObjectSnapshotStore

    module = index_module(impl, folder)
    store = ObjectSnapshotStore(_FileStore(folder), "snap", _Pointer(folder / "pointer"), 0)
    index = module.VectorIndex(dims, exact_threshold=1000, background_builds=False)
    before = rss()
    meter = PeakRss().start()
    started = time.perf_counter()
    snapshot = store.latest("c")
    assert snapshot is not None and snapshot.searcher is not None
    if impl == "new":
        installed = index.load(
            snapshot.ids, snapshot.vectors, snapshot.metadata, snapshot.searcher, adopt=True
        )
    else:
        installed = index.load(snapshot.ids, snapshot.vectors, snapshot.metadata, snapshot.searcher)
    seconds = time.perf_counter() - started
    del snapshot
    peak = meter.stop()
    assert installed and index.method == "scann"
    return {"peak_growth": peak - before, "settled_growth": rss() - before, "seconds": seconds}


def run_child(args: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory(n: int, dims: int) -> dict:
    raw = n * dims * 4
    out: dict = {"n": n, "dims": dims, "raw_vector_bytes": raw}
    for impl in ("old", "new"):
        with tempfile.TemporaryDirectory(prefix=f"bench-mem-{impl}-") as folder:
            built = run_child(["build", impl, str(n), str(dims), folder])
            recovered = run_child(["recover", impl, str(n), str(dims), folder])
        label = "previous" if impl == "old" else "current"
        out[label] = {
            **built,
            **recovered,
            "rss_after_build_per_vector": round(built["rss_growth"] / n, 1),
            "rss_after_build_x_raw": round(built["rss_growth"] / raw, 3),
            "untraced_x_raw": round((built["rss_growth"] - built["traced_python_numpy"]) / raw, 3),
            "recovery_peak_x_raw": round(recovered["peak_growth"] / raw, 3),
            "after_recovery_x_raw": round(recovered["settled_growth"] / raw, 3),
        }
    out["target_recovery_peak_x_raw"] = 2.0
    out["recovery_peak_target_met"] = out["current"]["recovery_peak_x_raw"] <= 2.0
    return out


# ---------------------------------------------------------------- (c) bytes per image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metadata_bytes(images: int) -> dict:
    """Writes `images` ImageMeta through RedisMetadataStore into a throwaway Valkey."""
    import redis

    from services.common.metadata import ImageMeta, RedisMetadataStore
    from visearch.localstack import redis_server_binary

    port = free_port()
    folder = tempfile.mkdtemp(prefix="bench-valkey-")
    server = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", folder],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        store = RedisMetadataStore(f"redis://127.0.0.1:{port}/0")
        used_before = int(client.info("memory")["used_memory"])
        rng = np.random.default_rng(0)
        metas = [
            ImageMeta(
                id=f"img-{i:08d}",
                sha256=rng.bytes(32).hex(),
                label=f"label{i % 100}",
                model_version="mobilenetv2-gem-v1",
                shard=i % 4,
                ingested_at=1.7e9 + i,
            )
            for i in range(images)
        ]
        for start in range(0, images, 200):
            store.put_images("bench", metas[start : start + 200])
        used_after = int(client.info("memory")["used_memory"])
        usage = [int(client.memory_usage(f"img:bench:{m.id}")) for m in metas[:500]]
        version = client.info("server").get("valkey_version") or client.info("server").get(
            "redis_version"
        )
        return {
            "images": images,
            "server": str(version),
            "img_hash_memory_usage_mean": round(float(np.mean(usage)), 1),
            "used_memory_growth_per_image": round((used_after - used_before) / images, 1),
        }
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def feature_bytes(sample: int) -> dict:
    """RootSIFT .npz sizes (as stored) for the first `sample` ukbench images."""
    import cv2

    from services.embedder.rootsift import extract_rootsift

    folder = Path("/work/shared/datasets/ukbench1000/images")
    paths = sorted(folder.glob("*.jpg"))[:sample] if folder.exists() else []
    if not paths:
        return {"skipped": "no ukbench1000 images"}
    sizes, counts = [], []
    for path in paths:
        bgr = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        features = extract_rootsift(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        sizes.append(len(features.to_npz()))
        counts.append(len(features.descriptors))
    return {
        "images": len(paths),
        "rootsift_npz_bytes_mean": round(float(np.mean(sizes)), 1),
        "keypoints_mean": round(float(np.mean(counts)), 1),
    }


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000, help="vectors for (a)")
    parser.add_argument("--memory-n", type=int, default=100_000, help="vectors for (b)")
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput point")
    parser.add_argument("--images", type=int, default=2000, help="metadata sample")
    parser.add_argument("--feature-images", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench/results/index_concurrency_memory.json"))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, impl, n, dims, folder = args.child
        if kind == "build":
            result = child_build(impl, int(n), int(dims), Path(folder))
        else:
            result = child_recover(impl, int(dims), Path(folder))
        print(json.dumps(result))
        return

    started = time.perf_counter()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "concurrency": concurrency(args.n, args.dims, args.seconds),
        "memory": memory(args.memory_n, args.dims),
        "metadata": metadata_bytes(args.images),
        "features": feature_bytes(args.feature_images),
    }
    mem = result["memory"]["current"]
    result["bytes_per_image"] = {
        "vector_raw": args.dims * 4,
        "vector_in_shard_memory": mem["rss_after_build_per_vector"],
        "vector_snapshot": round(mem["snapshot_bytes"] / args.memory_n, 1),
        "metadata_img_hash": result["metadata"]["img_hash_memory_usage_mean"],
        "metadata_redis_total": result["metadata"]["used_memory_growth_per_image"],
        "rootsift_features": result["features"].get("rootsift_npz_bytes_mean"),
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
