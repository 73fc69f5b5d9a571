"""Sharded-index operations on the real local stack: upsert throughput with and
without the write-ahead log, crash recovery, and search fan-out over 1/2/4 shards.

Writes (merging into) bench/results/index_ops.json and renders
docs/benchmarks_index_ops.md from it.

    .venv/bin/python bench/index_ops.py --quick                       # smoke run, < 3 min
    .venv/bin/python bench/index_ops.py --parts upsert,recovery       # S=100k / L=10k
    .venv/bin/python bench/index_ops.py --parts recovery --recovery 1000000:100000 \
        --recovery-restarts 1                                         # the target size
    .venv/bin/python bench/index_ops.py --parts fanout

1. upsert: (a) gateway `Ingest` of ukbench images (decode + embed + local features
   dominate), (b) `Indexer/Upsert` straight into two bare shard processes started
   beside the stack, one with VISEARCH_REDIS_URL (log on) and one without (log off),
   alternating rounds; vectors/s = vectors / summed RPC time of one sequential
   client (requests are built before each call is timed).
2. recovery: a bare shard (log on) is loaded with S vectors, snapshotted
   (`Indexer/Snapshot`), then given L more vectors (log only); `kill -9`; the
   same command is started again on the same port; time to SERVING (the port
   file is written right after health flips to SERVING) and until `Stats` says
   "scann" (background build); size and searches before vs after.
3. fanout: one stack per shard count, the same synthetic gallery (model dims)
   upserted straight into the shards by jump-hash placement plus matching
   metadata; single-client `Gateway/Search` (rerank none, k=10) of real photos,
   and a shard-level scatter-gather (parallel `Indexer/Search`) from the bench.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.metadata import ImageMeta, RedisMetadataStore
from services.common.proto_convert import vectors_to_proto
from services.gateway.sharding import shard_of
from visearch import datasets, localstack
from visearch.client import VisearchClient
from visearch.jobs import ingest_entries
from visearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.enable_retries", 0),
]
NEVER = "1000000000"  # an exact threshold / snapshot interval that never triggers in a run


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def code_state() -> dict[str, object]:
    """Which code ran: git HEAD and a digest of services/, visearch/ and protos/ as on disk."""
    digest = hashlib.sha256()
    files = sorted(
        [*ROOT.glob("services/**/*.py"), *ROOT.glob("visearch/**/*.py"), *ROOT.glob("protos/**/*")]
    )
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    head = os.environ.get("VISEARCH_BENCH_GIT_HEAD", "")
    if not head and (ROOT / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    return {
        "root": str(ROOT),
        "git_head": head,
        "source": os.environ.get("VISEARCH_BENCH_SOURCE", "working tree"),
        "source_tree": digest.hexdigest()[:16],
    }


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3) if values else float("nan")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {loadavg()[0]}] {msg}", flush=True)


def unit_vectors(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    x = rng.standard_normal((n, dims), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def chunk_vectors(seed: int, chunk: int, n: int, dims: int) -> np.ndarray:
    """Deterministic vectors for chunk `chunk` (so any chunk can be regenerated later)."""
    return unit_vectors(np.random.default_rng([seed, chunk]), n, dims)


def upsert_request(
    collection: str, ids: list[str], vectors: np.ndarray, labels: list[str] | None = None
) -> indexer_pb2.UpsertRequest:
    return indexer_pb2.UpsertRequest(
        collection=collection,
        ids=ids,
        vectors=vectors_to_proto(vectors),
        metadata=[common_pb2.ItemMetadata(label=label) for label in labels] if labels else [],
    )


def search_request(
    collection: str, queries: np.ndarray, k: int, label: str = ""
) -> indexer_pb2.IndexSearchRequest:
    return indexer_pb2.IndexSearchRequest(
        collection=collection,
        queries=vectors_to_proto(queries),
        k=k,
        filter=common_pb2.Filter(label=label),
    )


def stack_env(stack: localstack.StackState) -> dict[str, str]:
    return {
        "VISEARCH_REDIS_URL": stack.redis_url,
        "VISEARCH_S3_ENDPOINT": stack.s3_endpoint,
        "VISEARCH_S3_ACCESS_KEY": localstack.S3_ACCESS_KEY,
        "VISEARCH_S3_SECRET_KEY": localstack.S3_SECRET_KEY,
    }


class ShardProcess:
    """A bare `python -m services.indexer.main` started (and killed) by this bench."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str], grpc_port: int = 0) -> None:
        self.name = name
        self.workdir = workdir
        self.env = dict(env)
        self.port_file = workdir / f"{name}.ports.json"
        self.log_path = workdir / f"{name}.log"
        self.grpc_port = grpc_port
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.stub: indexer_pb2_grpc.IndexerStub | None = None
        self.spawned_at = 0.0

    def start(self) -> float:
        self.port_file.unlink(missing_ok=True)
        env = {
            **os.environ,
            "VISEARCH_GRPC_PORT": str(self.grpc_port),
            "VISEARCH_METRICS_PORT": "0",
            "VISEARCH_PORT_FILE": str(self.port_file),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        if "VISEARCH_REDIS_URL" not in self.env:
            env.pop("VISEARCH_REDIS_URL", None)
        with self.log_path.open("ab") as handle:
            self.spawned_at = time.perf_counter()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.indexer.main"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(ROOT),
                start_new_session=True,
            )
        return self.spawned_at

    def wait_serving(self, timeout_s: float) -> float:
        """Returns perf_counter() when the port file (written once SERVING) appeared."""
        assert self.process is not None
        deadline = time.perf_counter() + timeout_s
        while not self.port_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}); see {self.log_path}"
                )
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"{self.name} not SERVING after {timeout_s}s; see {self.log_path}"
                )
            time.sleep(0.005)
        at = time.perf_counter()
        ports = json.loads(self.port_file.read_text())
        self.grpc_port = int(ports["grpc_port"])
        if self.channel is not None:
            self.channel.close()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}", options=CHANNEL_OPTIONS)
        self.stub = indexer_pb2_grpc.IndexerStub(self.channel)
        return at

    def health_serving(self) -> bool:
        assert self.channel is not None
        response = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        return response.status == health_pb2.HealthCheckResponse.SERVING

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def peak_rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    def kill9(self) -> float:
        assert self.process is not None
        at = time.perf_counter()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        return at

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_events(self) -> list[dict[str, object]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    events.append(json.loads(line))
        return events


def log_ts(event: dict[str, object]) -> float:
    """The JSON log's UTC "ts" ("...T..:..:..mmmZ") as a Unix time."""
    text = str(event["ts"])
    base, millis = text[:-1].split(".")
    parsed = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return parsed.timestamp() + int(millis) / 1000.0


# --------------------------------------------------------------------------- 1. upsert


def upsert_window(
    stub: indexer_pb2_grpc.IndexerStub,
    collection: str,
    pool: np.ndarray,
    batch: int,
    window_s: float,
    max_vectors: int,
    id_prefix: str,
    warmup_requests: int,
) -> dict[str, object]:
    sent = 0
    cursor = 0
    latencies: list[float] = []
    request_index = 0
    while True:
        counted = request_index >= warmup_requests
        if counted and (sum(latencies) >= window_s or sent >= max_vectors):
            break
        if cursor + batch > len(pool):
            cursor = 0
        ids = [f"{id_prefix}-{request_index}-{i}" for i in range(batch)]
        request = upsert_request(collection, ids, pool[cursor : cursor + batch])
        cursor += batch
        t0 = time.perf_counter()
        response = stub.Upsert(request, timeout=120)
        elapsed = time.perf_counter() - t0
        assert response.upserted == batch
        request_index += 1
        if counted:
            latencies.append(elapsed)
            sent += batch
    rpc_s = sum(latencies)
    return {
        "vectors": sent,
        "requests": len(latencies),
        "rpc_s": round(rpc_s, 3),
        "vectors_per_s": round(sent / rpc_s, 1),
        "request_ms_p50": pct([x * 1000 for x in latencies], 50),
        "request_ms_p99": pct([x * 1000 for x in latencies], 99),
    }


def run_upsert_shard_path(
    stack: localstack.StackState, workdir: Path, args: argparse.Namespace
) -> dict[str, object]:
    base = {
        "VISEARCH_EXACT_THRESHOLD": NEVER,  # keep background ScaNN builds out of the timing
        "VISEARCH_SNAPSHOT_INTERVAL_S": NEVER,
        "VISEARCH_LOG_LEVEL": "WARNING",
    }
    logged = ShardProcess(
        "tp-log", workdir, {**base, **stack_env(stack), "VISEARCH_SHARD_ID": "900"}
    )
    plain = ShardProcess("tp-nolog", workdir, {**base, "VISEARCH_SHARD_ID": "901"})
    shards = {"log_on": logged, "log_off": plain}
    r = redis.Redis.from_url(stack.redis_url)
    results: dict[str, object] = {
        "method": "one sequential client; vectors / summed Upsert RPC time; fresh ids (inserts); "
        "requests built before each timed call; exact threshold and snapshot interval set "
        "out of reach so no ScaNN build or periodic snapshot runs in the window",
        "window_s": args.upsert_window_s,
        "rounds": args.upsert_rounds,
        "max_vectors_per_window": args.upsert_max_vectors,
        "redis_appendonly": "yes (appendfsync everysec, the local stack's Valkey)",
        "load_average_before": loadavg(),
        "by_dims": {},
    }
    try:
        for shard in shards.values():
            shard.start()
        for shard in shards.values():
            shard.wait_serving(120)
        rng = np.random.default_rng(7)
        for dims in args.upsert_dims:
            pool = unit_vectors(rng, 8192, dims)
            per_batch: dict[str, object] = {}
            for batch in args.upsert_batches:
                rounds: dict[str, list[dict[str, object]]] = {"log_on": [], "log_off": []}
                for round_index in range(args.upsert_rounds):
                    order = ["log_on", "log_off"] if round_index % 2 == 0 else ["log_off", "log_on"]
                    for name in order:
                        collection = f"tp{dims}b{batch}r{round_index}"
                        stub = shards[name].stub
                        assert stub is not None
                        before = loadavg()
                        window = upsert_window(
                            stub,
                            collection,
                            pool,
                            batch,
                            args.upsert_window_s,
                            args.upsert_max_vectors,
                            f"{name}{round_index}",
                            warmup_requests=3,
                        )
                        window["load_average_before"] = before
                        window["load_average_after"] = loadavg()
                        rounds[name].append(window)
                        if name == "log_on":  # bound Valkey memory: drop this window's log
                            r.delete(f"wal:{collection}:900")
                ratios = [
                    on["vectors_per_s"] / off["vectors_per_s"]  # type: ignore[operator]
                    for on, off in zip(rounds["log_on"], rounds["log_off"], strict=True)
                ]
                on_median = statistics.median(w["vectors_per_s"] for w in rounds["log_on"])  # type: ignore[misc]
                off_median = statistics.median(w["vectors_per_s"] for w in rounds["log_off"])  # type: ignore[misc]
                per_batch[str(batch)] = {
                    "log_on_vectors_per_s_median": round(on_median, 1),
                    "log_off_vectors_per_s_median": round(off_median, 1),
                    "log_on_over_off_per_round": [round(x, 3) for x in ratios],
                    "log_on_over_off_median": round(statistics.median(ratios), 3),
                    "rounds": rounds,
                }
                log(
                    f"upsert d={dims} b={batch}: log on {on_median:.0f}/s, off {off_median:.0f}/s,"
                    f" ratio {statistics.median(ratios):.3f}"
                )
            results["by_dims"][str(dims)] = per_batch  # type: ignore[index]
        r.delete("walcols:900")
    finally:
        for shard in shards.values():
            shard.stop()
    results["load_average_after"] = loadavg()
    return results


def run_upsert_gateway(stack: localstack.StackState, args: argparse.Namespace) -> dict[str, object]:
    entries = datasets.ukbench(args.dataset, limit=args.ingest_images + 16)
    warm, timed = entries[:16], entries[16:]
    with VisearchClient(stack.gateway, timeout_s=600) as client:
        ingest_entries(client, "ingest-warmup", warm, batch_size=16, workers=1)
        before = loadavg()
        started = time.perf_counter()
        per_s = ingest_entries(client, "ingest", timed, batch_size=16, workers=2)
        elapsed = time.perf_counter() - started
        after = loadavg()
        stats = client.stats("ingest")
    return {
        "method": "VisearchClient.ingest of ukbench1000 JPEGs (640x480), batches of 16, "
        "2 concurrent clients, after one warm-up batch; includes decode, embedding, RootSIFT, "
        "S3 writes, metadata and the logged shard upsert",
        "shards": stack.shards,
        "images": len(timed),
        "seconds": round(elapsed, 2),
        "images_per_s": round(per_s, 2),
        "indexed": stats.images,
        "load_average_before": before,
        "load_average_after": after,
    }


# --------------------------------------------------------------------------- 2. recovery


def top_ids(
    stub: indexer_pb2_grpc.IndexerStub,
    collection: str,
    queries: np.ndarray,
    k: int,
    label: str = "",
) -> tuple[list[list[str]], list[list[float]], str]:
    response = stub.Search(search_request(collection, queries, k, label), timeout=600)
    ids = [[n.id for n in row.neighbors] for row in response.results]
    scores = [[round(n.score, 5) for n in row.neighbors] for row in response.results]
    return ids, scores, response.method


def compare_searches(before: list[list[str]], after: list[list[str]]) -> dict[str, object]:
    identical = sum(1 for b, a in zip(before, after, strict=True) if b == a)
    overlap = [len(set(b) & set(a)) / max(1, len(b)) for b, a in zip(before, after, strict=True)]
    return {
        "queries": len(before),
        "identical_top_k": identical,
        "mean_overlap_at_k": round(float(np.mean(overlap)), 4),
    }


def collection_stats(stub: indexer_pb2_grpc.IndexerStub, collection: str) -> dict[str, object]:
    response = stub.Stats(indexer_pb2.IndexStatsRequest(collection=collection), timeout=60)
    (entry,) = response.collections
    return {
        "size": entry.size,
        "dims": entry.dims,
        "method": entry.method,
        "applied_seq": entry.applied_seq,
        "snapshot_seq": entry.snapshot_seq,
    }


def run_recovery(
    stack: localstack.StackState,
    workdir: Path,
    args: argparse.Namespace,
    snap_size: int,
    log_size: int,
    shard_id: int,
) -> dict[str, object]:
    dims, collection, k = args.recovery_dims, "recovery", 10
    load_batch, log_batch = args.recovery_load_batch, args.recovery_log_batch
    env = {
        **stack_env(stack),
        "VISEARCH_SHARD_ID": str(shard_id),
        "VISEARCH_SNAPSHOT_INTERVAL_S": NEVER,  # only our explicit Snapshot call
    }
    r = redis.Redis.from_url(stack.redis_url)
    wal_key = f"wal:{collection}:{shard_id}"
    report: dict[str, object] = {
        "snapshot_vectors": snap_size,
        "log_vectors": log_size,
        "dims": dims,
        "shard_id": shard_id,
        "load_batch": load_batch,
        "log_batch": log_batch,
        "loader_exact_threshold": NEVER,
        "restart_exact_threshold": args.recovery_exact_threshold,
        "snapshot_interval_s": NEVER,
        "load_average_before": loadavg(),
        "redis_used_memory_mb_start": round(r.info("memory")["used_memory"] / 2**20, 1),
    }
    # The loader never trains ScaNN (threshold out of reach) so loading is not slowed by
    # ~10 intermediate trainings; what is durable (log + snapshot) does not depend on it.
    loader = ShardProcess(
        f"rec{shard_id}-loader", workdir, {**env, "VISEARCH_EXACT_THRESHOLD": NEVER}
    )
    processes = [loader]
    try:
        loader.start()
        loader.wait_serving(120)
        assert loader.stub is not None
        acked = 0
        t0 = time.perf_counter()
        for chunk in range((snap_size + load_batch - 1) // load_batch):
            n = min(load_batch, snap_size - chunk * load_batch)
            ids = [f"s{chunk * load_batch + i:07d}" for i in range(n)]
            vectors = chunk_vectors(1, chunk, n, dims)
            acked += loader.stub.Upsert(
                upsert_request(collection, ids, vectors, ["snap"] * n), timeout=600
            ).upserted
        report["load_snapshot_part_s"] = round(time.perf_counter() - t0, 2)
        report["redis_used_memory_mb_before_snapshot"] = round(
            r.info("memory")["used_memory"] / 2**20, 1
        )
        t0 = time.perf_counter()
        covered = loader.stub.Snapshot(
            indexer_pb2.SnapshotRequest(collection=collection), timeout=3600
        ).covered_seq[collection]
        report["snapshot_rpc_s"] = round(time.perf_counter() - t0, 2)
        report["snapshot_covered_seq"] = covered
        log(f"recovery S={snap_size}: loaded, snapshot in {report['snapshot_rpc_s']}s")
        t0 = time.perf_counter()
        for chunk in range((log_size + log_batch - 1) // log_batch):
            n = min(log_batch, log_size - chunk * log_batch)
            ids = [f"l{chunk * log_batch + i:07d}" for i in range(n)]
            vectors = chunk_vectors(2, chunk, n, dims)
            acked += loader.stub.Upsert(
                upsert_request(collection, ids, vectors, ["log"] * n), timeout=600
            ).upserted
        report["load_log_part_s"] = round(time.perf_counter() - t0, 2)
        report["acknowledged_vectors"] = acked
        report["wal_entries"] = int(r.xlen(wal_key))
        report["redis_used_memory_mb_with_log"] = round(r.info("memory")["used_memory"] / 2**20, 1)
        report["stats_before_kill"] = collection_stats(loader.stub, collection)
        report["loader_peak_rss_mb"] = loader.peak_rss_mb()

        # Probes: stored vectors from the snapshot part and from the log part (each must
        # find itself first), and random vectors (top-k must be unchanged).
        stored_s = chunk_vectors(1, 0, min(load_batch, snap_size), dims)[:5]
        stored_l = chunk_vectors(2, 0, min(log_batch, log_size), dims)[:5]
        expected_self = [f"s{i:07d}" for i in range(len(stored_s))] + [
            f"l{i:07d}" for i in range(len(stored_l))
        ]
        random_q = unit_vectors(np.random.default_rng(99), 20, dims)
        before_ids, _, before_method = top_ids(loader.stub, collection, random_q, k)
        filtered_before = {
            label: sum(
                len(row) for row in top_ids(loader.stub, collection, random_q[:5], k, label)[0]
            )
            for label in ("snap", "log")
        }
        report["search_method_before_kill"] = before_method

        restarts = []
        victim = loader
        for restart_index in range(args.recovery_restarts):
            fresh = ShardProcess(
                f"rec{shard_id}-restart{restart_index}",
                workdir,
                {**env, "VISEARCH_EXACT_THRESHOLD": str(args.recovery_exact_threshold)},
                grpc_port=victim.grpc_port,
            )
            processes.append(fresh)
            wall_kill = time.time()
            t_kill = victim.kill9()
            t_spawn = fresh.start()
            t_serving = fresh.wait_serving(3600)
            assert fresh.stub is not None
            entry: dict[str, object] = {
                "killed_while": "loader (exact, just loaded)"
                if restart_index == 0
                else "steady state (ScaNN built)",
                "load_average_at_kill": loadavg(),
                "kill_to_spawn_s": round(t_spawn - t_kill, 3),
                "kill_to_serving_s": round(t_serving - t_kill, 3),
                "health_serving_confirmed": fresh.health_serving(),
                "stats_at_serving": collection_stats(fresh.stub, collection),
            }
            events = fresh.log_events()
            listening = next((e for e in events if e.get("msg") == "listening"), None)
            recovered = next((e for e in events if e.get("msg") == "recovered"), None)
            if listening is not None:
                entry["kill_to_listening_s"] = round(log_ts(listening) - wall_kill, 3)
            if recovered is not None:
                entry["kill_to_recovered_s"] = round(log_ts(recovered) - wall_kill, 3)
                entry["recovered_report"] = {
                    key: recovered.get(key)
                    for key in ("collections", "from_snapshots", "replayed_entries")
                }
            if listening is not None and recovered is not None:
                entry["snapshot_load_and_replay_s"] = round(
                    log_ts(recovered) - log_ts(listening), 3
                )
            after_ids, _, after_method = top_ids(fresh.stub, collection, random_q, k)
            self_ids, self_scores, _ = top_ids(
                fresh.stub, collection, np.concatenate([stored_s, stored_l]), 1
            )
            entry["search_at_serving"] = {
                "method": after_method,
                "vs_before_kill": compare_searches(before_ids, after_ids),
                "stored_vectors_found_first": sum(
                    1 for got, want in zip(self_ids, expected_self, strict=True) if got == [want]
                ),
                "stored_vectors_probed": len(expected_self),
            }
            entry["filtered_results_before_kill"] = filtered_before
            entry["filtered_results_at_serving"] = {
                label: sum(
                    len(row) for row in top_ids(fresh.stub, collection, random_q[:5], k, label)[0]
                )
                for label in ("snap", "log")
            }
            # Background ScaNN build: poll Stats; time one exact search per poll meanwhile.
            exact_search_ms: list[float] = []
            t_scann = None
            deadline = time.perf_counter() + args.scann_wait_s
            while time.perf_counter() < deadline:
                if collection_stats(fresh.stub, collection)["method"] == "scann":
                    t_scann = time.perf_counter()
                    break
                t0 = time.perf_counter()
                top_ids(fresh.stub, collection, random_q[:1], k)
                exact_search_ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(1.0)
            entry["kill_to_scann_s"] = round(t_scann - t_kill, 2) if t_scann else None
            entry["serving_to_scann_s"] = round(t_scann - t_serving, 2) if t_scann else None
            if t_scann is None:
                entry["scann_not_ready_after_s"] = args.scann_wait_s
            entry["search_ms_while_building_p50"] = pct(exact_search_ms, 50)
            entry["searches_while_building"] = len(exact_search_ms)
            scann_ids, _, scann_method = top_ids(fresh.stub, collection, random_q, k)
            timings = []
            for row in random_q:
                t0 = time.perf_counter()
                top_ids(fresh.stub, collection, row[None, :], k)
                timings.append((time.perf_counter() - t0) * 1000)
            self_ids, _, _ = top_ids(
                fresh.stub, collection, np.concatenate([stored_s, stored_l]), 1
            )
            entry["search_after_build"] = {
                "method": scann_method,
                "stored_vectors_found_first": sum(
                    1 for got, want in zip(self_ids, expected_self, strict=True) if got == [want]
                ),
                "vs_before_kill_exact": compare_searches(before_ids, scann_ids),
                "search_ms_p50": pct(timings, 50),
            }
            entry["stats_after_build"] = collection_stats(fresh.stub, collection)
            entry["size_equals_acknowledged"] = entry["stats_after_build"]["size"] == acked  # type: ignore[index]
            entry["peak_rss_mb"] = fresh.peak_rss_mb()
            entry["load_average_after"] = loadavg()
            restarts.append(entry)
            log(
                f"recovery S={snap_size} L={log_size} restart {restart_index}: "
                f"SERVING {entry['kill_to_serving_s']}s, scann {entry['kill_to_scann_s']}s, "
                f"size {entry['stats_after_build']['size']} / acked {acked}"  # type: ignore[index]
            )
            victim = fresh
        report["restarts"] = restarts
    finally:
        for process in processes:
            process.stop()
        r.delete(wal_key, f"snap:{collection}:{shard_id}", f"walcols:{shard_id}")
    report["load_average_after"] = loadavg()
    return report


# --------------------------------------------------------------------------- 3. fan-out


def run_fanout(
    shards: int, args: argparse.Namespace, query_images: list[bytes], dims: int
) -> dict[str, object]:
    total, tail = args.fanout_total, args.fanout_tail
    ids = [f"g{i:06d}" for i in range(total)]
    placement = [shard_of(i, shards) for i in ids]
    sizes = Counter(placement)
    if max(sizes.values()) - min(sizes.values()) >= tail // 2:
        raise RuntimeError(f"shard sizes {sizes} too uneven for a tail of {tail}")
    # Threshold just below the smallest shard, every shard's last batch (`tail` vectors)
    # crossing it: each shard trains ScaNN once, on all its vectors.
    threshold = min(sizes.values()) - tail // 2
    gallery = chunk_vectors(3, 0, total, dims)
    report: dict[str, object] = {
        "shards": shards,
        "total_vectors": total,
        "dims": dims,
        "shard_sizes": [sizes[s] for s in range(shards)],
        "exact_threshold": threshold,
    }
    collection = "fanout"
    with tempfile.TemporaryDirectory(prefix="visearch-fanout-") as state_dir:
        t0 = time.perf_counter()
        with localstack.running_stack(
            Path(state_dir), shards=shards, exact_threshold=threshold
        ) as stack:
            report["stack_start_s"] = round(time.perf_counter() - t0, 2)
            addresses = [
                next(p.address for p in stack.processes if p.name == f"indexer-{s}")
                for s in range(shards)
            ]
            channels = [grpc.insecure_channel(a, options=CHANNEL_OPTIONS) for a in addresses]
            stubs = [indexer_pb2_grpc.IndexerStub(c) for c in channels]
            try:
                with VisearchClient(stack.gateway, timeout_s=120) as client:
                    client.create_collection(collection, default_rerank="none")
                    t0 = time.perf_counter()
                    rows_by_shard = {
                        s: [i for i, p in enumerate(placement) if p == s] for s in range(shards)
                    }
                    for phase in ("head", "tail"):
                        for s, rows in rows_by_shard.items():
                            part = rows[:-tail] if phase == "head" else rows[-tail:]
                            step = 500 if phase == "head" else tail
                            for start in range(0, len(part), step):
                                chunk = part[start : start + step]
                                stubs[s].Upsert(
                                    upsert_request(
                                        collection,
                                        [ids[i] for i in chunk],
                                        gallery[chunk],
                                        [f"label{i % 1000}" for i in chunk],
                                    ),
                                    timeout=600,
                                )
                    report["upsert_s"] = round(time.perf_counter() - t0, 2)
                    t0 = time.perf_counter()
                    store = RedisMetadataStore(stack.redis_url)
                    stamp = time.time()

                    def put(i: int) -> None:
                        store.put_image(
                            collection,
                            ImageMeta(
                                id=ids[i],
                                sha256="0" * 64,
                                label=f"label{i % 1000}",
                                model_version=stack.model_version,
                                shard=placement[i],
                                ingested_at=stamp,
                            ),
                        )

                    with ThreadPoolExecutor(max_workers=4) as pool:
                        list(pool.map(put, range(total)))
                    report["metadata_s"] = round(time.perf_counter() - t0, 2)
                    t0 = time.perf_counter()
                    deadline = time.perf_counter() + args.scann_wait_s
                    methods = []
                    while time.perf_counter() < deadline:
                        methods = [collection_stats(stub, collection)["method"] for stub in stubs]
                        if all(m == "scann" for m in methods):
                            break
                        time.sleep(1.0)
                    report["scann_build_wait_s"] = round(time.perf_counter() - t0, 2)
                    report["shard_methods"] = methods
                    report["gateway_images"] = client.stats(collection).images

                    # Gateway: real photos, single client, sequential.
                    for i in range(args.fanout_warmup):
                        client.search(
                            collection, query_images[i % len(query_images)], k=10, rerank="none"
                        )
                    before = loadavg()
                    latencies, index_ms, embed_ms, meta_ms, total_ms = [], [], [], [], []
                    partial = short = 0
                    for i in range(args.fanout_queries):
                        image = query_images[i % len(query_images)]
                        t1 = time.perf_counter()
                        result = client.search(collection, image, k=10, rerank="none")
                        latencies.append((time.perf_counter() - t1) * 1000)
                        index_ms.append(result.timings_ms.get("index", float("nan")))
                        embed_ms.append(result.timings_ms.get("embed", float("nan")))
                        meta_ms.append(result.timings_ms.get("metadata", float("nan")))
                        total_ms.append(result.timings_ms.get("total", float("nan")))
                        partial += int(result.partial)
                        short += int(len(result.hits) < 10)
                    report["gateway_search"] = {
                        "queries": args.fanout_queries,
                        "warmup": args.fanout_warmup,
                        "client_ms_p50": pct(latencies, 50),
                        "client_ms_p99": pct(latencies, 99),
                        "index_stage_ms_p50": pct(index_ms, 50),
                        "index_stage_ms_p99": pct(index_ms, 99),
                        "embed_stage_ms_p50": pct(embed_ms, 50),
                        "metadata_stage_ms_p50": pct(meta_ms, 50),
                        "gateway_total_ms_p50": pct(total_ms, 50),
                        "partial_responses": partial,
                        "responses_with_fewer_than_k_hits": short,
                        "load_average_before": before,
                        "load_average_after": loadavg(),
                    }
                    log(f"fanout {shards} shard(s): gateway {report['gateway_search']}")

                # Shard level: the same scatter-gather, from the bench, random unit queries.
                queries = unit_vectors(
                    np.random.default_rng(5), args.fanout_queries + args.fanout_warmup, dims
                )
                requests = [search_request(collection, q[None, :], 10) for q in queries]
                with ThreadPoolExecutor(max_workers=shards) as pool:

                    def scatter(
                        request: indexer_pb2.IndexSearchRequest,
                    ) -> tuple[list[tuple[float, str]], set[str]]:
                        responses = list(
                            pool.map(lambda stub: stub.Search(request, timeout=30), stubs)
                        )
                        merged = sorted(
                            (-n.score, n.id)
                            for resp in responses
                            for n in resp.results[0].neighbors
                        )[:10]
                        return merged, {resp.method for resp in responses}

                    for request in requests[: args.fanout_warmup]:
                        scatter(request)
                    before = loadavg()
                    shard_latencies = []
                    used: set[str] = set()
                    for request in requests[args.fanout_warmup :]:
                        t1 = time.perf_counter()
                        _, methods_used = scatter(request)
                        shard_latencies.append((time.perf_counter() - t1) * 1000)
                        used |= methods_used
                report["shard_level_search"] = {
                    "queries": len(shard_latencies),
                    "ms_p50": pct(shard_latencies, 50),
                    "ms_p99": pct(shard_latencies, 99),
                    "methods": sorted(used),
                    "load_average_before": before,
                    "load_average_after": loadavg(),
                }
                log(f"fanout {shards} shard(s): shard level {report['shard_level_search']}")
            finally:
                for channel in channels:
                    channel.close()
    return report


# --------------------------------------------------------------------------- report


def _row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str]) -> list[str]:
    return ["", _row(header), _row(["---"] * len(header))]


def _code_line(part: dict) -> str:
    before, after = part.get("code_before", {}), part.get("code_after", {})
    note = f"code: git {str(before.get('git_head'))[:12]}, source tree {before.get('source_tree')}"
    if before.get("source_tree") != after.get("source_tree"):
        note += f" → {after.get('source_tree')} (CHANGED during the run)"
    return note


def _markdown_upsert(upsert: dict) -> list[str]:
    lines = [f"### Upsert throughput, write-ahead log on vs off ({upsert.get('date')})", ""]
    gw = upsert.get("gateway")
    if isinstance(gw, dict):
        lines.append(
            f"Gateway `Ingest` ({gw['shards']} shard, log on): **{gw['images_per_s']} images/s** "
            f"({gw['images']} ukbench JPEGs, batches of 16, 2 client threads; load "
            f"{gw['load_average_before'][0]} → {gw['load_average_after'][0]}). Decode, embedding "
            "and RootSIFT dominate; the shard path below is what the index itself takes."
        )
        lines.append("")
    shard = upsert.get("shard_path")
    if isinstance(shard, dict):
        lines.append(
            "Shard path: `Indexer/Upsert` into a bare shard started with `VISEARCH_REDIS_URL` "
            "(log on; the stack's Valkey, AOF everysec) and one started without it (log off), "
            f"in the same run, alternating, {shard['rounds']} rounds of up to "
            f"{shard['window_s']} s of RPC time (at most {shard['max_vectors_per_window']:,} "
            "vectors) each; one "
            "sequential client, new ids; vectors/s = vectors / summed RPC time, median over "
            "rounds; on/off = median of the per-round ratios."
        )
        lines += _table(
            [
                "dims",
                "batch",
                "log on vectors/s",
                "log off vectors/s",
                "on/off",
                "per-round on/off",
                "request p50 ms on / off",
            ]
        )
        for dims, per_batch in shard["by_dims"].items():
            for batch, row in per_batch.items():
                on = statistics.median(w["request_ms_p50"] for w in row["rounds"]["log_on"])
                off = statistics.median(w["request_ms_p50"] for w in row["rounds"]["log_off"])
                lines.append(
                    _row(
                        [
                            dims,
                            batch,
                            f"{row['log_on_vectors_per_s_median']:,.0f}",
                            f"{row['log_off_vectors_per_s_median']:,.0f}",
                            f"**{row['log_on_over_off_median']:.2f}**",
                            ", ".join(f"{x:.2f}" for x in row["log_on_over_off_per_round"]),
                            f"{on:.2f} / {off:.2f}",
                        ]
                    )
                )
        lines += [
            "",
            f"Load average (1/5/15 min) over the shard-path run: {shard['load_average_before']} → "
            f"{shard['load_average_after']}; {_code_line(upsert)}.",
            "",
        ]
    return lines


def _markdown_recovery(recovery: dict) -> list[str]:
    lines = ["### Recovery after `kill -9`", ""]
    lines.append(
        "A bare shard (log on) is loaded with S vectors, `Indexer/Snapshot` is called, then L "
        "more vectors are upserted (in the log only); `kill -9`; the same command is started "
        "again on the same port. SERVING = the port file the shard writes right after its health "
        "flips to SERVING (then confirmed by a health check). kill→listening is process start "
        "and imports; snapshot load + replay is listening→`recovered` in the shard's own log. "
        "ScaNN is trained in the background after SERVING; until then searches are exact."
    )
    lines += _table(
        [
            "S (snapshot)",
            "L (log)",
            "dims",
            "log entries replayed",
            "killed",
            "kill→listening s",
            "snapshot load + replay s",
            "**kill→SERVING s**",
            "kill→ScaNN s",
            "size after = acked",
            "top-10 identical (exact) at SERVING",
            "stored vectors found first (SERVING / ScaNN)",
            "label-filter hits before → after (snap / log)",
            "peak RSS MB",
            "load at kill",
        ]
    )
    ordered = sorted(recovery.values(), key=lambda rep: rep["snapshot_vectors"])
    for rep in ordered:
        for entry in rep["restarts"]:
            at = entry["search_at_serving"]
            after = entry["search_after_build"]
            fb, fa = entry["filtered_results_before_kill"], entry["filtered_results_at_serving"]
            scann = entry["kill_to_scann_s"]
            if scann is None:
                scann = f"not built after {entry.get('scann_not_ready_after_s')} s"
            size = entry["stats_after_build"]["size"]
            ok = "yes" if entry["size_equals_acknowledged"] else "**NO**"
            lines.append(
                _row(
                    [
                        f"{rep['snapshot_vectors']:,}",
                        f"{rep['log_vectors']:,}",
                        rep["dims"],
                        f"{(entry.get('recovered_report') or {}).get('replayed_entries', 0):,}",
                        entry["killed_while"],
                        entry.get("kill_to_listening_s"),
                        entry.get("snapshot_load_and_replay_s"),
                        f"**{entry['kill_to_serving_s']}**",
                        scann,
                        f"{size:,} = {rep['acknowledged_vectors']:,}: {ok}",
                        f"{at['vs_before_kill']['identical_top_k']}/{at['vs_before_kill']['queries']}",
                        f"{at['stored_vectors_found_first']}/{at['stored_vectors_probed']} / "
                        f"{after.get('stored_vectors_found_first')}/{at['stored_vectors_probed']}",
                        f"{fb['snap']} / {fb['log']} → {fa['snap']} / {fa['log']}",
                        entry["peak_rss_mb"],
                        entry["load_average_at_kill"][0],
                    ]
                )
            )
    lines.append("")
    for rep in ordered:
        building = ", ".join(str(e["search_ms_while_building_p50"]) for e in rep["restarts"])
        built = ", ".join(
            f"{e['search_after_build']['search_ms_p50']} ms (top-10 overlap with the exact "
            f"answer {e['search_after_build']['vs_before_kill_exact']['mean_overlap_at_k']})"
            for e in rep["restarts"]
        )
        lines.append(
            f"- S={rep['snapshot_vectors']:,}, L={rep['log_vectors']:,} ({rep.get('date')}): "
            f"loading S took {rep['load_snapshot_part_s']} s (batches of {rep['load_batch']}), the "
            f"`Snapshot` RPC {rep['snapshot_rpc_s']} s, loading L (upserts of {rep['log_batch']}; "
            f"stream length {rep['wal_entries']:,}, i.e. the L upserts plus the entry at the "
            f"snapshot's seq, which `XTRIM MINID` keeps) {rep['load_log_part_s']} s; Valkey used "
            f"{rep['redis_used_memory_mb_with_log']} MB holding the log (before the snapshot "
            f"trimmed it: {rep['redis_used_memory_mb_before_snapshot']} MB). One-query search "
            f"p50 while ScaNN trains (exact): {building} ms; after: {built}. {_code_line(rep)}."
        )
    lost = [
        (rep, e)
        for rep in ordered
        for e in rep["restarts"]
        if e["filtered_results_at_serving"]["log"] < e["filtered_results_before_kill"]["log"]
    ]
    lines += [
        "",
        "Notes: the probe set is 20 random unit queries (top-10 compared with the answer "
        "before the kill) and 10 stored vectors, 5 from the snapshot part and 5 from the log "
        "part (each must come back first). Random unit vectors have no neighbour structure, so "
        "the ScaNN top-10 overlap with the exact answer (searching ~5% of the leaves) is the "
        "worst case, not a recall figure for real embeddings. The loader runs with the exact "
        "threshold out of reach so that loading is not slowed by repeated trainings; the "
        "restarted shard uses the default (20,000).",
    ]
    if lost:
        lines += [
            "",
            "**Lost on recovery:** label-filtered searches for items that were only in the log "
            "find nothing after the restart ("
            + "; ".join(
                f"S={rep['snapshot_vectors']:,}: {e['filtered_results_before_kill']['log']} hits "
                f"before the kill, {e['filtered_results_at_serving']['log']} after"
                for rep, e in {id(rep): (rep, e) for rep, e in lost}.values()
            )
            + "): vectors and ids are replayed, their label and attributes are not.",
        ]
    lines.append("")
    return lines


def _markdown_recheck(recheck: dict, measured_head: str) -> list[str]:
    """A later run of the recovery part on a newer commit (`--out` another file, merged)."""
    lines = []
    for rep in recheck.values():
        for e in rep["restarts"]:
            fb, fa = e["filtered_results_before_kill"], e["filtered_results_at_serving"]
            lines.append(
                f"Re-check on git {rep['code_before']['git_head'][:12]} (after "
                f"{measured_head[:12]}), S={rep['snapshot_vectors']:,}, "
                f"L={rep['log_vectors']:,}, {rep.get('date')}: label-filter hits for log-only "
                f"items {fb['log']} → {fa['log']}; kill→SERVING {e['kill_to_serving_s']} s, "
                f"kill→ScaNN {e['kill_to_scann_s']} s, size = acked: "
                f"{'yes' if e['size_equals_acknowledged'] else 'NO'} (load at kill "
                f"{e['load_average_at_kill'][0]})."
            )
    return [*lines, ""] if lines else []


def _markdown_fanout(fanout: dict) -> list[str]:
    lines = [f"### Search fan-out over 1, 2, 4 shards ({fanout.get('date')})", ""]
    first = next(iter(fanout["by_shards"].values()))
    lines.append(
        f"The same {first['total_vectors']:,} synthetic L2-normalised {first['dims']}-d vectors "
        "in every configuration, upserted straight into the shards by jump-hash placement "
        "(`shard_of`) with matching metadata (`RedisMetadataStore.put_image`); every shard on "
        "ScaNN (exact threshold just below the smallest shard, so each shard trains once, on "
        "all its vectors). Gateway: `Gateway/Search` of ukbench photos, rerank none, k=10, one "
        "client, sequential, after warm-up; it includes embedding the photo on CPU; `index` is "
        "the gateway's own scatter-gather timing. Shard level: the bench's parallel "
        "`Indexer/Search` to every shard + merge (random unit queries, one client)."
    )
    lines += _table(
        [
            "shards",
            "vectors per shard",
            "gateway p50 / p99 ms",
            "gateway `index` stage p50 / p99 ms",
            "embed stage p50 ms",
            "shard-level scatter-gather p50 / p99 ms",
            "queries (gw + shard)",
            "partial",
            "load before → after",
        ]
    )
    for n, rep in sorted(fanout["by_shards"].items(), key=lambda kv: int(kv[0])):
        g, s = rep["gateway_search"], rep["shard_level_search"]
        lines.append(
            _row(
                [
                    n,
                    ", ".join(f"{x:,}" for x in rep["shard_sizes"]),
                    f"{g['client_ms_p50']} / {g['client_ms_p99']}",
                    f"{g['index_stage_ms_p50']} / {g['index_stage_ms_p99']}",
                    g["embed_stage_ms_p50"],
                    f"{s['ms_p50']} / {s['ms_p99']}",
                    f"{g['queries']} + {s['queries']}",
                    g["partial_responses"],
                    f"{g['load_average_before'][0]} → {s['load_average_after'][0]}",
                ]
            )
        )
    lines += [
        "",
        "The gateway's end-to-end time is dominated by embedding the photo on CPU, which moved "
        "with the machine's load between the three stacks (see the embed column); the fan-out "
        "cost is in the `index` stage and the shard-level columns. "
        f"{_code_line(fanout)}.",
        "",
    ]
    return lines


def render_markdown(results: dict[str, object]) -> str:
    machine = results.get("machine", {})
    assert isinstance(machine, dict)
    lines = [
        "## Index operations (bench/index_ops.py)",
        "",
        f"Machine: {machine.get('cpus')} CPU cores, {machine.get('memory_gib')} GiB RAM, "
        f"Python {machine.get('python')}, {machine.get('platform')}. The machine was shared "
        "with other benchmarks: each measurement records the 1/5/15-minute load average before "
        "and after (`bench/results/index_ops.json`); absolute numbers are pessimistic, compare "
        "the ratios taken within one run.",
        "",
    ]
    invocations = results.get("invocations")
    if isinstance(invocations, list) and invocations:
        code = invocations[-1]["code"]
        lines += [
            f"Code measured: {code.get('source')}, git {str(code.get('git_head'))[:12]}. Runs "
            "(`.venv/bin/python bench/index_ops.py ...`): "
            + "; ".join(f"`{' '.join(i['argv'])}` ({i['started']})" for i in invocations)
            + ".",
            "",
        ]
    upsert, recovery, fanout = results.get("upsert"), results.get("recovery"), results.get("fanout")
    if isinstance(upsert, dict):
        lines += _markdown_upsert(upsert)
    if isinstance(recovery, dict) and recovery:
        lines += _markdown_recovery(recovery)
        recheck = results.get("recovery_recheck")
        if isinstance(recheck, dict) and recheck:
            first = next(iter(recovery.values()))
            lines += _markdown_recheck(recheck, str(first["code_before"]["git_head"]))
    if isinstance(fanout, dict) and fanout.get("by_shards"):
        lines += _markdown_fanout(fanout)
    return "\n".join(lines) + "\n"


def parse_pairs(text: str) -> list[tuple[int, int]]:
    pairs = []
    for part in text.split(","):
        snap, _, logged = part.partition(":")
        pairs.append((int(snap), int(logged)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--parts", default="upsert,recovery,fanout")
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/ukbench1000")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/index_ops.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs/benchmarks_index_ops.md")
    parser.add_argument("--ingest-images", type=int, default=192)
    parser.add_argument("--upsert-dims", default="1280,256")
    parser.add_argument("--upsert-batches", default="1,16,256")
    parser.add_argument("--upsert-window-s", type=float, default=3.0)
    parser.add_argument("--upsert-rounds", type=int, default=3)
    parser.add_argument("--upsert-max-vectors", type=int, default=16384)
    parser.add_argument("--recovery", default="100000:10000", help="S:L pairs, comma separated")
    parser.add_argument("--recovery-dims", type=int, default=256)
    parser.add_argument("--recovery-load-batch", type=int, default=1000)
    parser.add_argument("--recovery-log-batch", type=int, default=16)
    parser.add_argument("--recovery-restarts", type=int, default=2)
    parser.add_argument("--recovery-exact-threshold", type=int, default=20_000)
    parser.add_argument("--scann-wait-s", type=float, default=900.0)
    parser.add_argument("--fanout-shards", default="1,2,4")
    parser.add_argument("--fanout-total", type=int, default=40_000)
    parser.add_argument("--fanout-tail", type=int, default=1000)
    parser.add_argument("--fanout-queries", type=int, default=300)
    parser.add_argument("--fanout-warmup", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.ingest_images = 16
        args.upsert_window_s, args.upsert_rounds, args.upsert_max_vectors = 0.5, 1, 2048
        args.recovery = "5000:500"
        args.recovery_restarts = 1
        args.recovery_exact_threshold = 2000
        args.scann_wait_s = 120.0
        args.fanout_shards, args.fanout_total, args.fanout_tail = "1,2", 3000, 300
        args.fanout_queries, args.fanout_warmup = 30, 5
        if args.out == ROOT / "bench/results/index_ops.json":
            args.out = ROOT / "bench/results/index_ops_quick.json"
        if args.markdown == ROOT / "docs/benchmarks_index_ops.md":
            args.markdown = None  # a smoke run does not overwrite the docs
    args.upsert_dims = [int(x) for x in args.upsert_dims.split(",")]
    args.upsert_batches = [int(x) for x in args.upsert_batches.split(",")]
    parts = set(args.parts.split(","))

    results: dict[str, object] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["machine"] = {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    results["quick"] = args.quick
    if parts & {"upsert", "recovery", "fanout"}:
        invocations = results.setdefault("invocations", [])
        assert isinstance(invocations, list)
        invocations.append({"argv": sys.argv[1:], "started": now_utc(), "code": code_state()})

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        if args.markdown is not None:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(render_markdown(results))

    if parts & {"upsert", "recovery"}:
        with tempfile.TemporaryDirectory(prefix="visearch-indexops-") as state_dir:
            workdir = Path(state_dir) / "bare"
            workdir.mkdir()
            t0 = time.perf_counter()
            with localstack.running_stack(Path(state_dir) / "stack", shards=1) as stack:
                log(f"stack up in {time.perf_counter() - t0:.1f}s")
                if "upsert" in parts:
                    upsert: dict[str, object] = {"date": now_utc(), "code_before": code_state()}
                    upsert["gateway"] = run_upsert_gateway(stack, args)
                    log(f"gateway ingest: {upsert['gateway']}")
                    upsert["shard_path"] = run_upsert_shard_path(stack, workdir, args)
                    upsert["code_after"] = code_state()
                    results["upsert"] = upsert
                    save()
                if "recovery" in parts:
                    recovery = results.setdefault("recovery", {})
                    for index, (snap_size, log_size) in enumerate(parse_pairs(args.recovery)):
                        before = code_state()
                        rep = run_recovery(stack, workdir, args, snap_size, log_size, 910 + index)
                        rep["date"] = now_utc()
                        rep["code_before"], rep["code_after"] = before, code_state()
                        recovery[f"S{snap_size}_L{log_size}"] = rep  # type: ignore[index]
                        save()
    if "fanout" in parts:
        model_dir = localstack.find_model_dir(localstack.DEFAULT_MODELS_DIR)
        dims = int(json.loads((model_dir / "manifest.json").read_text())["output_dims"])
        entries = datasets.ukbench(args.dataset, limit=50)
        images = [e.path.read_bytes() for e in entries]
        fanout: dict[str, object] = {
            "date": now_utc(),
            "code_before": code_state(),
            "by_shards": {},
        }
        results["fanout"] = fanout
        for shards in [int(x) for x in args.fanout_shards.split(",")]:
            fanout["by_shards"][str(shards)] = run_fanout(shards, args, images, dims)  # type: ignore[index]
            fanout["code_after"] = code_state()
            save()
    save()
    print(f"wrote {args.out}" + (f" and {args.markdown}" if args.markdown else ""))


if __name__ == "__main__":
    main()
