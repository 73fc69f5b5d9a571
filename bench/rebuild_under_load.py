"""Does a background ScaNN rebuild slow queries? Latency and failures, steady vs rebuilding.

One run measures single-query search latency (k = 10, one client issuing queries back to
back) in three phases on the same index:
- steady: ScaNN built on N vectors, plus MAX_FRESH_ROWS fresh rows (written since the
  build, scored exactly on every query), no build running, no writes;
- rebuild: from the one-row upsert that crosses the trigger (it copies the live rows
  under the index lock and starts the re-train) until the new searcher is swapped in;
- after: once swapped (F fresh rows folded into the new partitions).
The steady phase is split into halves; the ratio between them is the noise of this
machine at that moment. Half the queries are held-out vectors of the same mixture, half
are vectors upserted shortly before (a failure: an error or an empty answer; a self-miss: a
fresh vector not finding its own id in its top 10).

Targets: "inprocess" (services.indexer.vector_index.VectorIndex called from a thread of
this process, as the servicer does) and "process" (a real `python -m
services.indexer.main` shard without a log, queried over gRPC; rebuild start/swap taken
from its JSON log). The in-process index is built once, then rebuilt once per --variants
entry (build-thread niceness : ScaNN training threads), so the variants run at growing N;
the process target runs the service defaults (vector_index.BUILD_NICENESS / BUILD_THREADS,
recorded in the JSON).

    .venv/bin/python bench/rebuild_under_load.py --quick     # smoke run, ~1 minute
    .venv/bin/python bench/rebuild_under_load.py             # N = 100k x 256, a few minutes
Writes bench/results/rebuild_under_load.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ann_recall import MixtureModel  # noqa: E402

from services.indexer import vector_index  # noqa: E402
from services.indexer.vector_index import MAX_FRESH_ROWS, VectorIndex  # noqa: E402

K = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


class QueryClient:
    """One thread issuing single queries back to back; records (start, seconds, ok)."""

    def __init__(self, search, held_out: np.ndarray, fresh_pool: list[tuple[str, np.ndarray]]):
        self._search = search  # (query float32 [1, d]) -> list of ids (best first)
        self._held_out = held_out
        self.fresh_pool = fresh_pool  # (id, vector [d]) upserted so far, appended by writer
        self.records: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="query-client", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        rng = np.random.default_rng(5)
        i = 0
        while not self._stop.is_set():
            i += 1
            fresh = i % 2 == 0 and len(self.fresh_pool) > 0
            if fresh:
                # one of the latest 2,000 upserts: read-your-writes while the index changes
                image_id, vector = self.fresh_pool[
                    len(self.fresh_pool) - 1 - int(rng.integers(min(2000, len(self.fresh_pool))))
                ]
                query = vector[None, :]
            else:
                query = self._held_out[i % len(self._held_out)][None, :]
            start = time.perf_counter()
            try:
                ids = self._search(query)
                status = "failed" if not ids else "ok"
                if status == "ok" and fresh and image_id not in ids:
                    status = "self_miss"
            except Exception as exc:  # a failed query is what this bench counts
                status = "failed"
                if len(self.errors) < 5:
                    self.errors.append(repr(exc))
            self.records.append((start, time.perf_counter() - start, status))

    def window(self, t0: float, t1: float) -> dict:
        rows = [r for r in self.records if t0 <= r[0] < t1]
        lat = np.array([r[1] for r in rows]) * 1000
        if len(lat) == 0:
            return {"queries": 0}
        return {
            "queries": len(rows),
            "seconds": round(t1 - t0, 2),
            "failures": sum(1 for r in rows if r[2] == "failed"),
            # a recent write not in its own top 10: once folded into a new searcher it is
            # found by ScaNN, not scored exactly, so this is ANN recall, not a lost write
            "self_misses": sum(1 for r in rows if r[2] == "self_miss"),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "max_ms": round(float(lat.max()), 3),
            "mean_ms": round(float(lat.mean()), 3),
            "qps": round(len(rows) / (t1 - t0), 1),
        }


def ratios(steady: dict, other: dict) -> dict:
    return {
        key: round(other[key] / steady[key], 2)
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")
        if steady.get(key) and other.get(key) is not None
    }


def phases(
    client: QueryClient,
    upsert,
    rebuild_window,
    data: np.ndarray,
    cursor: int,
    steady_s: float,
    after_s: float,
) -> tuple[dict, int]:
    """Runs steady -> trigger -> rebuild -> after, writing data[cursor:] (returns the new
    cursor); upsert(ids, vectors) writes, rebuild_window(t_trigger) blocks until the swap
    and returns (start, end) perf_counter times."""
    fresh_target = MAX_FRESH_ROWS  # one more fresh row triggers the rebuild
    pool = client.fresh_pool
    for s in range(0, fresh_target, 1000):
        ids = [f"v{i}" for i in range(cursor, cursor + min(1000, fresh_target - s))]
        upsert(ids, data[cursor : cursor + len(ids)])
        pool.extend(zip(ids, data[cursor : cursor + len(ids)], strict=True))
        cursor += len(ids)
    log(f"  {fresh_target} fresh rows written; steady phase {steady_s} s")
    time.sleep(1.0)
    t_steady = time.perf_counter()
    time.sleep(steady_s)
    t_trigger = time.perf_counter()
    upsert([f"v{cursor}"], data[cursor : cursor + 1])  # copies the rows, starts the build
    trigger_s = time.perf_counter() - t_trigger
    pool.append((f"v{cursor}", data[cursor]))
    cursor += 1
    log(f"  trigger upsert took {trigger_s * 1000:.0f} ms; waiting for the swap")
    build_start, swapped = rebuild_window(t_trigger)
    time.sleep(after_s)
    t_end = time.perf_counter()
    half = t_steady + steady_s / 2
    out = {
        "steady": client.window(t_steady, t_trigger),
        "steady_first_half": client.window(t_steady, half),
        "steady_second_half": client.window(half, t_trigger),
        "rebuild": client.window(t_trigger, swapped),
        "after": client.window(swapped, t_end),
        "trigger_upsert_ms": round(trigger_s * 1000, 1),
        "build_started_after_trigger_s": round(build_start - t_trigger, 3),
        "rebuild_s": round(swapped - t_trigger, 2),
        "fresh_rows_in_steady": fresh_target,
        "vectors_at_rebuild": cursor,
        "client_errors": list(client.errors),
        "load_avg_1min_at_swap": round(os.getloadavg()[0], 2),
    }
    out["rebuild_vs_steady"] = ratios(out["steady"], out["rebuild"])
    out["noise_second_vs_first_half"] = ratios(out["steady_first_half"], out["steady_second_half"])
    log(f"  rebuild {out['rebuild_s']} s; rebuild/steady {json.dumps(out['rebuild_vs_steady'])}")
    return out, cursor


def run_inprocess(data, queries, n0, dims, args, variants: list[tuple[int, int]]) -> list[dict]:
    """One index, built once; then one rebuild per (niceness, training threads) variant."""
    index = VectorIndex(dims, exact_threshold=1000, background_builds=False)
    t0 = time.perf_counter()
    index.upsert([f"v{i}" for i in range(n0)], data[:n0])
    log(f"inprocess: initial build of {n0} in {time.perf_counter() - t0:.1f} s")
    index.background_builds = True

    def search(q):
        return [n.id for n in index.search(q, K)[0][0]]

    def window(t_trigger):
        # the trigger upsert copies the rows and starts the build thread before returning
        while index.rebuilding:
            time.sleep(0.01)
        return t_trigger, time.perf_counter()

    client = QueryClient(search, queries, [])
    client.start()
    results, cursor = [], n0
    defaults = vector_index.BUILD_NICENESS, vector_index.BUILD_THREADS
    try:
        for nice, threads in variants:
            vector_index.BUILD_NICENESS, vector_index.BUILD_THREADS = nice, threads
            log(f"inprocess: rebuild with niceness +{nice}, training threads {threads or 'all'}")
            before = index.rebuilds
            out, cursor = phases(
                client, index.upsert, window, data, cursor, args.steady_s, args.after_s
            )
            out.update(
                build_niceness=nice,
                training_threads=threads,
                rebuilds_during_run=index.rebuilds - before,
            )
            results.append(out)
    finally:
        client.stop()
        vector_index.BUILD_NICENESS, vector_index.BUILD_THREADS = defaults
    return results


def run_process(data, queries, n0, dims, args) -> dict:
    from index_ops import ShardProcess, log_ts, search_request, upsert_request

    workdir = Path(tempfile.mkdtemp(prefix="rebuild_bench_"))
    shard = ShardProcess(
        "rebuild-shard",
        workdir,
        {
            "VISEARCH_EXACT_THRESHOLD": str(n0),
            "VISEARCH_LOG_LEVEL": "INFO",
            "VISEARCH_SHARD_ID": "0",
        },
    )
    shard.start()
    shard.wait_serving(120)
    stub = shard.stub
    try:
        t0 = time.perf_counter()
        for s in range(0, n0, 5000):
            ids = [f"v{i}" for i in range(s, min(n0, s + 5000))]
            stub.Upsert(upsert_request("bench", ids, data[s : s + len(ids)]), timeout=300)

        def swaps() -> list[dict]:
            return [e for e in shard.log_events() if e.get("msg") == "scann index swapped in"]

        while not swaps():
            time.sleep(0.1)
        log(f"process: initial load + build of {n0} in {time.perf_counter() - t0:.1f} s")
        wall_minus_perf = time.time() - time.perf_counter()

        def search(q):
            response = stub.Search(search_request("bench", q, K), timeout=30)
            return [n.id for n in response.results[0].neighbors]

        def upsert(ids, vectors):
            stub.Upsert(upsert_request("bench", ids, vectors), timeout=300)

        def window(t_trigger):
            while len(swaps()) < 2:
                time.sleep(0.05)
            events = shard.log_events()
            started = [e for e in events if e.get("msg") == "scann build started"][-1]
            swapped = swaps()[-1]
            return (
                log_ts(started) - wall_minus_perf,
                max(log_ts(swapped) - wall_minus_perf, t_trigger),
            )

        client = QueryClient(search, queries, [])
        client.start()
        try:
            out, _ = phases(client, upsert, window, data, n0, args.steady_s, args.after_s)
        finally:
            client.stop()
        out["log_build_s"] = swaps()[-1].get("build_s")
        out["peak_rss_mb"] = shard.peak_rss_mb()
    finally:
        shard.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="vectors in the first build")
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--steady-s", type=float, default=20.0)
    ap.add_argument("--after-s", type=float, default=10.0)
    ap.add_argument("--targets", default="inprocess,process")
    ap.add_argument(
        "--variants",
        default=f"{vector_index.BUILD_NICENESS}:{vector_index.BUILD_THREADS},"
        f"5:{max(1, (os.cpu_count() or 1) - 1)}",
        help="in-process rebuilds, in order, as niceness:training_threads (0 = all cores); "
        "the first is the service default",
    )
    ap.add_argument("--quick", action="store_true", help="N = 50k, 8 s phases")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rebuild_under_load.json"))
    args = ap.parse_args()
    if args.quick:
        args.n, args.steady_s, args.after_s = 50_000, 8.0, 4.0
    assert args.n * vector_index.REBUILD_CHANGE_FRACTION > MAX_FRESH_ROWS + 1000, (
        "N too small: the fresh-row trigger must fire before the changed-share one"
    )
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    variants = [tuple(int(x) for x in v.split(":")) for v in args.variants.split(",")]
    total = args.n + (len(variants) + 1) * (MAX_FRESH_ROWS + 1)
    model = MixtureModel(args.dims, max(100, min(4000, total // 250)), seed=11)
    data, _ = model.sample(total, seed=12)
    queries, _ = model.sample(1000, seed=13)
    log(f"data {total} x {args.dims}")
    results: dict = {}
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        if target == "inprocess":
            results["inprocess"] = run_inprocess(data, queries, args.n, args.dims, args, variants)
        elif target == "process":
            results["process"] = run_process(data, queries, args.n, args.dims, args)
    out = {
        "config": {
            "n": args.n,
            "dims": args.dims,
            "k": K,
            "steady_s": args.steady_s,
            "after_s": args.after_s,
            "max_fresh_rows": MAX_FRESH_ROWS,
            "clients": 1,
            "service_build_niceness": vector_index.BUILD_NICENESS,
            "service_build_threads": vector_index.BUILD_THREADS,
            "data": f"Gaussian mixture (bench/ann_recall.py MixtureModel), {model.n_clusters} "
            "clusters",
            "quick": args.quick,
            "argv": sys.argv[1:],
        },
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
