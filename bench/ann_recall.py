"""Recall@10 and queries/s of one shard's vector index against exact search and faiss-cpu.

Methods (each measured in a fresh subprocess so RSS deltas are clean):
- brute force: numpy/BLAS matrix product + argpartition, two ways: "numpy_full" (one
  [batch, N] score matrix, BLAS on all threads, as VectorIndex._search_exact does) and
  "numpy_blocked" (database in blocks of 65,536 rows split over Python threads, BLAS on one
  thread each); plus faiss IndexFlatIP as a C++ exact reference;
- ScaNN through services.indexer.vector_index.VectorIndex (what the service builds,
  parameters from scann_params_for) and ScaNN built directly with other parameters; both
  swept over leaves_to_search x pre_reorder_num_neighbors at query time;
- faiss HNSW (IndexHNSWFlat, M=32, efConstruction=200), swept over efSearch;
- faiss IVF-PQ fast-scan + exact re-rank ("IVF{nlist},PQ{m}x4fs,RFlat"), swept over
  nprobe x k_factor.

Data: L2-normalised float32 from a mixture of Gaussian clusters (see MixtureModel), queries
drawn from the same distribution; or "--uniform": uniform on the sphere, the worst case.
Ground truth: exact top-k by inner product.

Threads: every method runs with the same thread count (--threads, default: the machine's
cores): OMP_NUM_THREADS / OPENBLAS_NUM_THREADS in the worker's environment, threadpoolctl
for BLAS, faiss.omp_set_num_threads, ScaNN searcher.set_num_threads +
search_batched_parallel (ScaNN trains with training_threads=0, i.e. all cores).

Usage:
  python bench/ann_recall.py --n 20000 --quick                 # smoke run, < 2 minutes
  python bench/ann_recall.py --n 1000000 --dims 256            # the target configuration
  python bench/ann_recall.py --n 200000 --dims 1280
  python bench/ann_recall.py --n 100000 --dims 256 --uniform   # worst case
Writes bench/results/ann_recall_<config>.json and (with --markdown) the section
docs/benchmarks_ann.md, which lists every JSON in bench/results/ann_recall_*.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks_ann.md"
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0
BATCH = 100
K = 10

# ---------------------------------------------------------------------------------------
# data


class MixtureModel:
    """A mixture of anisotropic Gaussian clusters, L2-normalised afterwards.

    - a global variance spectrum decaying as (1+i)^-0.6 over the d coordinates (real
      embeddings have a few dominant directions), randomly rotated;
    - centres in two levels: n_clusters // 25 super-centres, each cluster centre = its
      super-centre + 0.8 x an independent draw (related clusters lie near each other);
    - cluster sizes log-normal (sigma 1): the largest clusters are ~20x the median;
    - within a cluster, noise of total energy sigma_k^2 (sigma_k = noise x U(0.6, 1.4)) of
      which 75 % lies in a cluster-specific random subspace of `rank` directions with
      decaying scales and 25 % is spread over all d coordinates (following the spectrum).
    Queries are drawn from the same model with another random stream.
    """

    def __init__(
        self,
        dims: int,
        n_clusters: int,
        seed: int,
        rank: int = 12,
        noise: float = 1.0,
        low_rank_share: float = 0.75,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.noise, self.low_rank_share = noise, low_rank_share
        self.dims, self.n_clusters, self.rank = dims, n_clusters, rank
        spec = (1.0 + np.arange(dims)) ** -0.6
        spec *= dims / spec.sum()
        self.sd = np.sqrt(spec).astype(np.float32)
        n_super = max(4, n_clusters // 25)
        supers = rng.standard_normal((n_super, dims)).astype(np.float32) * self.sd
        parent = rng.integers(n_super, size=n_clusters)
        centres = (
            supers[parent]
            + 0.8 * rng.standard_normal((n_clusters, dims)).astype(np.float32) * self.sd
        )
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        weights = rng.lognormal(0.0, 1.0, n_clusters)
        self.weights = weights / weights.sum()
        self.sigma = (noise * rng.uniform(0.6, 1.4, n_clusters)).astype(np.float32)
        # cluster-specific low-rank directions (in the spectral frame), unit norm each
        bases = rng.standard_normal((n_clusters, rank, dims)).astype(np.float32) * self.sd
        bases /= np.linalg.norm(bases, axis=2, keepdims=True)
        scales = (1.0 + np.arange(rank)) ** -0.5
        scales *= math.sqrt(low_rank_share / float((scales**2).sum()))
        self.bases = bases * scales[None, :, None].astype(np.float32)
        self.iso = math.sqrt(1.0 - low_rank_share)
        gaussian = rng.standard_normal((dims, dims))
        q, r = np.linalg.qr(gaussian)
        self.rotation = (q * np.sign(np.diag(r))).astype(np.float32)

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors float32 [n, dims] L2-normalised, cluster labels [n])."""
        rng = np.random.default_rng(seed)
        labels = np.sort(rng.choice(self.n_clusters, size=n, p=self.weights))
        out = np.empty((n, self.dims), dtype=np.float32)
        bounds = np.searchsorted(labels, np.arange(self.n_clusters + 1))
        for c in range(self.n_clusters):
            lo, hi = bounds[c], bounds[c + 1]
            if hi == lo:
                continue
            m = hi - lo
            z = rng.standard_normal((m, self.rank), dtype=np.float32) @ self.bases[c]
            g = rng.standard_normal((m, self.dims), dtype=np.float32) * (
                self.sd * (self.iso / math.sqrt(self.dims))
            )
            out[lo:hi] = self.centres[c] + self.sigma[c] * (z + g)
        # rotate in blocks, normalise, shuffle (so any prefix is a fair subset)
        perm = rng.permutation(n)
        rotated = np.empty_like(out)
        for s in range(0, n, 65536):
            block = out[perm[s : s + 65536]] @ self.rotation
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            rotated[s : s + 65536] = block
        return rotated, labels[perm]


def uniform_sphere(n: int, dims: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dims), dtype=np.float32)
    for s in range(0, n, 65536):
        block = rng.standard_normal((min(65536, n - s), dims), dtype=np.float32)
        out[s : s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, block: int = 131072):
    """Exact top-k by inner product: (ids int64 [q, k], scores float32 [q, k]), best first."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for s in range(0, len(base), block):
        sc = queries @ base[s : s + block].T
        kk = min(k, sc.shape[1])
        part = np.argpartition(sc, sc.shape[1] - kk, axis=1)[:, -kk:]
        best_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + s], axis=1)
        if best_s.shape[1] > k:
            keep = np.argpartition(best_s, best_s.shape[1] - k, axis=1)[:, -k:]
            best_s = np.take_along_axis(best_s, keep, 1)
            best_i = np.take_along_axis(best_i, keep, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(best_s, order, 1)


def data_stats(base, queries, base_labels, query_labels, gt_ids, gt_scores) -> dict:
    """How much neighbourhood structure the data has."""
    rng = np.random.default_rng(7)
    a = base[rng.integers(len(base), size=2000)]
    b = base[rng.integers(len(base), size=2000)]
    stats = {
        "cos_top1_mean": round(float(gt_scores[:, 0].mean()), 4),
        "cos_top10_mean": round(float(gt_scores[:, -1].mean()), 4),
        "cos_random_pair_mean": round(float((a * b).sum(1).mean()), 4),
        "cos_random_pair_p99": round(float(np.percentile((a * b).sum(1), 99)), 4),
        # relative contrast: mean distance to a random point / distance to the 10th NN
        "relative_contrast_10": round(
            float(
                np.mean(
                    np.sqrt(np.maximum(2 - 2 * (queries[:200] @ a[:500].T).mean(1), 0))
                    / np.sqrt(np.maximum(2 - 2 * gt_scores[:200, -1], 1e-12))
                )
            ),
            3,
        ),
    }
    if base_labels is not None:
        same = base_labels[gt_ids] == query_labels[:, None]
        stats["gt_share_in_query_cluster"] = round(float(same.mean()), 4)
    return stats


# ---------------------------------------------------------------------------------------
# measurement helpers (worker side)


def rss_bytes() -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_BUILT: dict = {}


def mark_built() -> None:
    """Called by each method right after its index is built, before any search."""
    _BUILT["rss"], _BUILT["hwm"] = rss_bytes()
    _BUILT["t"] = time.perf_counter()


def recall_at_k(found: np.ndarray, gt: np.ndarray, k: int) -> float:
    hits = 0
    for row, truth in zip(found, gt, strict=True):
        hits += len(np.intersect1d(row[:k], truth[:k], assume_unique=False))
    return hits / (len(gt) * k)


def measure(search, queries, gt, k, repeats, n_single, batch=BATCH, single=None) -> dict:
    """search(q [b, d]) -> ids [b, k] (int array). Batch-of-100 QPS (best of repeats,
    every repeat listed), recall@k of the first pass, single-query latency percentiles
    (single(q [d]) if given, else search(q [1, d]))."""
    search(queries[:batch])  # warm-up
    runs, cpu_runs, found = [], [], None
    for rep in range(repeats):
        parts = []
        start, cpu = time.perf_counter(), time.process_time()
        for s in range(0, len(queries), batch):
            parts.append(search(queries[s : s + batch]))
        runs.append(time.perf_counter() - start)
        cpu_runs.append(time.process_time() - cpu)
        if rep == 0:
            found = np.concatenate(
                [np.asarray(p).reshape(-1, np.asarray(p).shape[-1]) for p in parts]
            )
    latencies = []
    for i in range(min(n_single, len(queries))):
        start = time.perf_counter()
        if single is not None:
            single(queries[i])
        else:
            search(queries[i : i + 1])
        latencies.append(time.perf_counter() - start)
    lat_ms = np.array(latencies) * 1000
    return {
        "recall": round(recall_at_k(found, gt, k), 4),
        "qps": round(len(queries) / min(runs), 1),
        "qps_runs": [round(len(queries) / r, 1) for r in runs],
        # CPU time of the whole process (all threads) per query, least of the repeats:
        # hardly affected by other processes' load, unlike wall-clock QPS
        "cpu_ms_per_query": round(min(cpu_runs) / len(queries) * 1000, 4),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
        "p95_ms": round(float(np.percentile(lat_ms, 95)), 3),
    }


# ---------------------------------------------------------------------------------------
# methods (worker side). Each returns (build info, list of sweep points).


def run_numpy(spec, base, queries, gt, log):
    from threadpoolctl import threadpool_limits

    threads, k = spec["threads"], spec["k"]
    index = np.array(base, copy=True)  # the "index" of brute force is the matrix
    mark_built()
    build = {"build_s": 0.0}
    points = []

    def full(q):
        with threadpool_limits(threads, user_api="blas"):
            sc = q @ index.T
        top = np.argpartition(sc, sc.shape[1] - k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(sc, top, 1), axis=1)
        return np.take_along_axis(top, order, 1)

    pool = ThreadPoolExecutor(threads)
    block = 65536
    chunks = [(s, min(s + block, len(index))) for s in range(0, len(index), block)]

    def worker_top(q, my_chunks):
        best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
        best_i = np.zeros((len(q), 0), dtype=np.int64)
        for s, e in my_chunks:
            sc = q @ index[s:e].T
            part = np.argpartition(sc, sc.shape[1] - k, axis=1)[:, -k:]
            best_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], axis=1)
            best_i = np.concatenate([best_i, part + s], axis=1)
            if best_s.shape[1] > 4 * k:
                keep = np.argpartition(best_s, best_s.shape[1] - k, axis=1)[:, -k:]
                best_s = np.take_along_axis(best_s, keep, 1)
                best_i = np.take_along_axis(best_i, keep, 1)
        return best_s, best_i

    def blocked(q):
        with threadpool_limits(1, user_api="blas"):
            futures = [pool.submit(worker_top, q, chunks[t::threads]) for t in range(threads)]
            res = [f.result() for f in futures]
        s = np.concatenate([r[0] for r in res], axis=1)
        i = np.concatenate([r[1] for r in res], axis=1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(i, keep, 1)

    nq = spec["bf_queries"]
    for name, fn in (("numpy_full", full), ("numpy_blocked", blocked)):
        log(f"{name}: timing {nq} queries")
        m = measure(fn, queries[:nq], gt[:nq], k, spec["repeats"], spec["bf_single"])
        points.append({"variant": name, "params": {}, **m})
    return build, points


def run_faiss_flat(spec, base, queries, gt, log):
    import faiss

    faiss.omp_set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    build = {"build_s": round(time.perf_counter() - t0, 2)}
    mark_built()
    nq = spec["bf_queries"]
    m = measure(
        lambda q: index.search(q, spec["k"])[1],
        queries[:nq],
        gt[:nq],
        spec["k"],
        spec["repeats"],
        spec["bf_single"],
    )
    return build, [{"variant": "faiss_flat_ip", "params": {}, **m}]


def scann_sweep(searcher, num_leaves, spec, queries, gt, log, docids: bool):
    k, threads = spec["k"], spec["threads"]
    searcher.set_num_threads(threads)
    points = []
    fractions = spec["scann_leaf_fractions"]
    leaves_grid = sorted({max(1, min(num_leaves, round(num_leaves * f))) for f in fractions})
    for reorder in spec["scann_reorder"]:
        recalls = []
        for leaves in leaves_grid:

            def search(q, leaves=leaves, reorder=reorder):
                ids, _ = searcher.search_batched_parallel(
                    q,
                    final_num_neighbors=k,
                    pre_reorder_num_neighbors=reorder,
                    leaves_to_search=leaves,
                    batch_size=max(1, -(-len(q) // threads)),
                )
                return np.asarray(ids, dtype=np.int64) if docids else ids

            def single(q, leaves=leaves, reorder=reorder):
                return searcher.search(
                    q,
                    final_num_neighbors=k,
                    pre_reorder_num_neighbors=reorder,
                    leaves_to_search=leaves,
                )

            m = measure(
                search, queries, gt, k, spec["sweep_repeats"], spec["single"], single=single
            )
            log(
                f"  leaves={leaves} reorder={reorder}: recall {m['recall']} qps {m['qps']} "
                f"p50 {m['p50_ms']} ms"
            )
            points.append(
                {
                    "variant": "sweep",
                    "params": {"leaves_to_search": leaves, "pre_reorder_num_neighbors": reorder},
                    **m,
                }
            )
            recalls.append(m["recall"])
            if plateaued(recalls):
                break
    return points


def run_scann_service(spec, base, queries, gt, log):
    sys.path.insert(0, str(ROOT))
    from services.indexer.vector_index import VectorIndex, scann_params_for

    n, d = base.shape
    params = scann_params_for(n)
    log(f"VectorIndex build, scann_params_for({n}) = {params}")
    ids = [str(i) for i in range(n)]
    import inspect

    kwargs = {}
    if "background_builds" in inspect.signature(VectorIndex).parameters:
        kwargs["background_builds"] = False  # build in this thread, timed
    t0 = time.perf_counter()
    index = VectorIndex(d, exact_threshold=n, **kwargs)
    index.upsert(ids, base)
    if hasattr(index, "wait_for_build"):
        index.wait_for_build()
    build_s = time.perf_counter() - t0
    mark_built()
    assert index.method == "scann", index.method
    del ids
    build = {"build_s": round(build_s, 2), "scann_params_for": params.__dict__}
    k = spec["k"]
    points = []

    # 1. what the service runs: VectorIndex.search (ScaNN search_batched, one thread)
    def service_search(q):
        found = index.search(q, k)
        if isinstance(found, tuple):  # (neighbours, method) in newer VectorIndex
            found = found[0]
        return np.array([[int(nb.id) for nb in row] for row in found])

    m = measure(service_search, queries, gt, k, spec["repeats"], spec["single"])
    log(f"  VectorIndex.search default: recall {m['recall']} qps {m['qps']}")
    points.append(
        {
            "variant": "service_VectorIndex.search_1thread",
            "params": {
                "leaves_to_search": params.leaves_to_search,
                "pre_reorder_num_neighbors": params.reorder,
            },
            **m,
        }
    )
    # 2. the same default parameters on the same searcher, with the benchmark's threads
    searcher = index._scann
    searcher.set_num_threads(spec["threads"])

    def default_parallel(q):
        ids, _ = searcher.search_batched_parallel(
            q, final_num_neighbors=k, batch_size=max(1, -(-len(q) // spec["threads"]))
        )
        return np.asarray(ids, dtype=np.int64)

    m = measure(
        default_parallel,
        queries,
        gt,
        k,
        spec["repeats"],
        spec["single"],
        single=lambda q: searcher.search(q, final_num_neighbors=k),
    )
    log(f"  default params, {spec['threads']} threads: recall {m['recall']} qps {m['qps']}")
    points.append(
        {
            "variant": "default_params_parallel",
            "params": {
                "leaves_to_search": params.leaves_to_search,
                "pre_reorder_num_neighbors": params.reorder,
            },
            **m,
        }
    )
    points += scann_sweep(searcher, params.num_leaves, spec, queries, gt, log, docids=True)
    return build, points


def run_scann_direct(spec, base, queries, gt, log):
    import scann

    n, _ = base.shape
    p = spec["params"]
    num_leaves = p.get("num_leaves") or max(16, min(4000, int(math.sqrt(n))))
    log(f"ScaNN direct build num_leaves={num_leaves} {p}")
    t0 = time.perf_counter()
    builder = (
        scann.scann_ops_pybind.builder(base, spec["k"], "dot_product")
        .tree(
            num_leaves=num_leaves,
            num_leaves_to_search=max(8, num_leaves // 20),
            training_sample_size=min(n, p.get("training_sample_size", 250_000)),
            spherical=p.get("spherical", False),
            soar_lambda=p.get("soar_lambda"),
        )
        .score_ah(
            p.get("dims_per_block", 2),
            anisotropic_quantization_threshold=p.get("anisotropic_quantization_threshold", 0.2),
        )
        .reorder(p.get("reorder", 200))
    )
    searcher = builder.build()
    mark_built()
    build = {
        "build_s": round(time.perf_counter() - t0, 2),
        "build_params": {**p, "num_leaves": num_leaves},
    }
    points = scann_sweep(searcher, num_leaves, spec, queries, gt, log, docids=False)
    return build, points


def run_hnsw(spec, base, queries, gt, log):
    import faiss

    faiss.omp_set_num_threads(spec["threads"])
    p = spec["params"]
    m_links, ef_c = p.get("M", 32), p.get("efConstruction", 200)
    index = faiss.IndexHNSWFlat(base.shape[1], m_links, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_c
    t0 = time.perf_counter()
    step = 100_000
    for s in range(0, len(base), step):
        index.add(base[s : s + step])
        log(f"  HNSW added {min(s + step, len(base))} in {time.perf_counter() - t0:.0f} s")
    build = {
        "build_s": round(time.perf_counter() - t0, 2),
        "build_params": {"M": m_links, "efConstruction": ef_c},
    }
    mark_built()
    if p.get("save"):  # reused by the interleaved run (--interleave-hnsw)
        faiss.write_index(index, p["save"])
        log(f"  HNSW written to {p['save']}")
    points, recalls = [], []
    for ef in spec["hnsw_ef"]:
        index.hnsw.efSearch = ef
        m = measure(
            lambda q: index.search(q, spec["k"])[1],
            queries,
            gt,
            spec["k"],
            spec["sweep_repeats"],
            spec["single"],
        )
        log(f"  efSearch={ef}: recall {m['recall']} qps {m['qps']} p50 {m['p50_ms']} ms")
        points.append({"variant": "sweep", "params": {"efSearch": ef}, **m})
        recalls.append(m["recall"])
        if plateaued(recalls):
            break
    return build, points


def run_ivfpq_fs(spec, base, queries, gt, log):
    import faiss

    faiss.omp_set_num_threads(spec["threads"])
    n, d = base.shape
    p = spec["params"]
    nlist = p["nlist"]
    m = p.get("m", d // 2)
    key = f"IVF{nlist},PQ{m}x4fs,RFlat"
    log(f"faiss {key}")
    t0 = time.perf_counter()
    index = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    train_n = min(n, p.get("training_sample_size", 250_000))
    rng = np.random.default_rng(1)
    train = base[np.sort(rng.choice(n, train_n, replace=False))] if train_n < n else base
    index.train(train)
    del train
    t_train = time.perf_counter() - t0
    for s in range(0, n, 200_000):
        index.add(base[s : s + 200_000])
    build = {
        "build_s": round(time.perf_counter() - t0, 2),
        "train_s": round(t_train, 2),
        "build_params": {"factory": key, "training_sample_size": train_n},
    }
    mark_built()
    ivf = faiss.extract_index_ivf(index)
    refine = faiss.downcast_index(index)
    points = []
    for k_factor in spec["ivf_k_factor"]:
        refine.k_factor = k_factor
        recalls = []
        for nprobe in spec["ivf_nprobe"]:
            if nprobe > nlist:
                continue
            ivf.nprobe = nprobe
            mm = measure(
                lambda q: index.search(q, spec["k"])[1],
                queries,
                gt,
                spec["k"],
                spec["sweep_repeats"],
                spec["single"],
            )
            log(
                f"  nprobe={nprobe} k_factor={k_factor}: recall {mm['recall']} "
                f"qps {mm['qps']} p50 {mm['p50_ms']} ms"
            )
            points.append(
                {"variant": "sweep", "params": {"nprobe": nprobe, "k_factor": k_factor}, **mm}
            )
            recalls.append(mm["recall"])
            if plateaued(recalls):
                break
    return build, points


def run_interleaved(spec, base, queries, gt, log):
    """ScaNN (the service's build parameters), faiss IVF-PQ fast-scan + RFlat and numpy
    brute force built side by side in one process, then measured in rounds that alternate
    between them (at `threads` threads and at 1 thread), so that the load other processes
    put on the shared machine falls on all of them alike. Build times / memory of each
    are in the separate per-method runs; here build_s is the sum."""
    import faiss
    import scann
    from threadpoolctl import threadpool_limits

    sys.path.insert(0, str(ROOT))
    from services.indexer.vector_index import scann_params_for

    n, d = base.shape
    k, threads, p = spec["k"], spec["threads"], spec["params"]
    sp = scann_params_for(n)
    t0 = time.perf_counter()
    searcher = (
        scann.scann_ops_pybind.builder(base, k, "dot_product")
        .tree(
            num_leaves=sp.num_leaves,
            num_leaves_to_search=sp.leaves_to_search,
            training_sample_size=sp.training_sample_size,
        )
        .score_ah(
            sp.dims_per_block,
            anisotropic_quantization_threshold=sp.anisotropic_quantization_threshold,
        )
        .reorder(sp.reorder)
        .build()
    )
    scann_s = time.perf_counter() - t0
    log(f"ScaNN (scann_params_for({n}) = {sp}) built in {scann_s:.0f} s")
    faiss.omp_set_num_threads(threads)
    key = f"IVF{p['nlist']},PQ{p.get('m', d // 2)}x4fs,RFlat"
    t0 = time.perf_counter()
    ivf_index = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(1)
    train_n = min(n, 250_000)
    ivf_index.train(base[np.sort(rng.choice(n, train_n, replace=False))] if train_n < n else base)
    ivf_index.add(base)
    ivf_s = time.perf_counter() - t0
    log(f"faiss {key} built in {ivf_s:.0f} s")
    ivf = faiss.extract_index_ivf(ivf_index)
    refine = faiss.downcast_index(ivf_index)
    hnsw = faiss.read_index(p["hnsw_index"]) if p.get("hnsw_index") else None
    if hnsw is not None:
        assert hnsw.ntotal == n, f"{p['hnsw_index']} holds {hnsw.ntotal} vectors, not {n}"
        log(f"faiss HNSW read from {p['hnsw_index']} (built by the 'hnsw' method)")
    mark_built()
    build = {
        "build_s": round(scann_s + ivf_s, 2),
        "scann_build_s": round(scann_s, 2),
        "ivf_build_s": round(ivf_s, 2),
        "build_params": {"scann": {**sp.__dict__}, "faiss": key},
    }
    pool = {1: ThreadPoolExecutor(1), threads: ThreadPoolExecutor(threads)}
    block = 65536
    chunks = [(s, min(s + block, n)) for s in range(0, n, block)]

    def bf_part(q, my_chunks):
        best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
        best_i = np.zeros((len(q), 0), dtype=np.int64)
        for s, e in my_chunks:
            sc = q @ base[s:e].T
            part = np.argpartition(sc, sc.shape[1] - k, axis=1)[:, -k:]
            best_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], axis=1)
            best_i = np.concatenate([best_i, part + s], axis=1)
            if best_s.shape[1] > 4 * k:
                keep = np.argpartition(best_s, best_s.shape[1] - k, axis=1)[:, -k:]
                best_s = np.take_along_axis(best_s, keep, 1)
                best_i = np.take_along_axis(best_i, keep, 1)
        return best_s, best_i

    def brute(q, t):
        res = [f.result() for f in [pool[t].submit(bf_part, q, chunks[i::t]) for i in range(t)]]
        s = np.concatenate([r[0] for r in res], axis=1)
        i = np.concatenate([r[1] for r in res], axis=1)
        return np.take_along_axis(i, np.argsort(-s, axis=1, kind="stable")[:, :k], 1)

    def scann_fn(leaves, reorder):
        def f(q, t):
            ids, _ = searcher.search_batched_parallel(
                q,
                final_num_neighbors=k,
                pre_reorder_num_neighbors=reorder,
                leaves_to_search=leaves,
                batch_size=max(1, -(-len(q) // t)),
            )
            return ids

        return f

    def ivf_fn(nprobe, k_factor):
        def f(q, t):
            ivf.nprobe = nprobe
            refine.k_factor = k_factor
            return ivf_index.search(q, k)[1]

        return f

    def hnsw_fn(ef):
        def f(q, t):
            hnsw.hnsw.efSearch = ef
            return hnsw.search(q, k)[1]

        return f

    entries = [("numpy_blocked brute force", {}, brute, spec["bf_queries"])]
    entries += [
        (
            f"ScaNN num_leaves={sp.num_leaves}",
            {"leaves_to_search": lv, "pre_reorder_num_neighbors": ro},
            scann_fn(lv, ro),
            len(queries),
        )
        for lv, ro in p["scann_points"]
    ]
    entries += [
        (f"faiss {key}", {"nprobe": npb, "k_factor": kf}, ivf_fn(npb, kf), len(queries))
        for npb, kf in p["ivf_points"]
    ]
    if hnsw is not None:
        entries += [
            ("faiss HNSW M=32,efC=200", {"efSearch": ef}, hnsw_fn(ef), len(queries))
            for ef in p.get("hnsw_points", [])
        ]
    runs: dict = {}
    for rnd in range(p["rounds"]):
        for t in sorted({threads, 1}, reverse=True):
            with threadpool_limits(1 if t == 1 else threads):
                faiss.omp_set_num_threads(t)
                searcher.set_num_threads(t)
                for name, params, fn, nq in entries:
                    blas = threadpool_limits(1, user_api="blas") if fn is brute else None
                    qs = queries[:nq]
                    fn(qs[:BATCH], t)
                    start, cpu = time.perf_counter(), time.process_time()
                    found = [fn(qs[s : s + BATCH], t) for s in range(0, nq, BATCH)]
                    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                    if blas is not None:
                        blas.restore_original_limits()
                    key_ = (name, json.dumps(params), t)
                    entry = runs.setdefault(key_, {"qps": [], "cpu": []})
                    entry["qps"].append(nq / wall)
                    entry["cpu"].append(cpu / nq * 1000)
                    entry["nq"] = nq
                    if rnd == 0:
                        entry["recall"] = recall_at_k(
                            np.concatenate([np.asarray(f) for f in found]), gt[:nq], k
                        )
        log(f"round {rnd + 1}/{p['rounds']} done, load {os.getloadavg()[0]:.1f}")
    points = []
    for (name, params, t), e in runs.items():
        points.append(
            {
                "variant": f"{name} @{t} thread{'s' if t > 1 else ''}",
                "method": name,
                "threads": t,
                "params": json.loads(params),
                "recall": round(e["recall"], 4),
                "qps": round(max(e["qps"]), 1),
                "qps_median": round(float(np.median(e["qps"])), 1),
                "qps_runs": [round(x, 1) for x in e["qps"]],
                "cpu_ms_per_query": round(min(e["cpu"]), 4),
                "p50_ms": None,
                "nq": e["nq"],
            }
        )
    for pt in points:
        log(
            f"  {pt['variant']} {pt['params']}: recall {pt['recall']} "
            f"qps best {pt['qps']} median {pt['qps_median']} cpu {pt['cpu_ms_per_query']}"
        )
    return build, points


def run_large_k(spec, base, queries, gt_unused, log):
    """Recall@k of VectorIndex.search for large k (the service allows k up to MAX_K and
    over-fetches for filtered searches), against exact top-k, and what raising
    pre_reorder_num_neighbors / leaves_to_search at query time recovers."""
    sys.path.insert(0, str(ROOT))
    import inspect

    from services.indexer.vector_index import VectorIndex, scann_params_for

    n, d = base.shape
    kwargs = {}
    if "background_builds" in inspect.signature(VectorIndex).parameters:
        kwargs["background_builds"] = False
    t0 = time.perf_counter()
    index = VectorIndex(d, exact_threshold=n, **kwargs)
    index.upsert([str(i) for i in range(n)], base)
    if hasattr(index, "wait_for_build"):
        index.wait_for_build()
    build = {"build_s": round(time.perf_counter() - t0, 2)}
    mark_built()
    sp = scann_params_for(n)
    q = queries[: spec["params"].get("queries", 100)]
    with _blas_threads(spec["threads"]):
        exact_ids, _ = exact_topk(base, q, max(spec["params"]["ks"]))
    points = []
    for k in spec["params"]["ks"]:
        found = index.search(q, k)
        found = found[0] if isinstance(found, tuple) else found
        ids = [[int(nb.id) for nb in row] for row in found]
        variants = [("VectorIndex.search", {}, ids)]
        for pre, leaves in (
            (max(sp.reorder, 2 * k), sp.leaves_to_search),
            (max(sp.reorder, 2 * k), 4 * sp.leaves_to_search),
        ):
            r, _ = index._scann.search_batched(
                q, final_num_neighbors=k, pre_reorder_num_neighbors=pre, leaves_to_search=leaves
            )
            variants.append(
                (
                    "direct",
                    {"pre_reorder_num_neighbors": pre, "leaves_to_search": leaves},
                    [[int(x) for x in row] for row in r],
                )
            )
        for name, params, rows in variants:
            rec = float(
                np.mean(
                    [
                        len(set(row) & set(e[:k].tolist())) / k
                        for row, e in zip(rows, exact_ids, strict=True)
                    ]
                )
            )
            points.append(
                {
                    "variant": name,
                    "k": k,
                    "params": params,
                    "recall": round(rec, 4),
                    "qps": 0,
                    "p50_ms": None,
                }
            )
            log(f"  k={k} {name} {params}: recall@k {rec:.3f}")
    return build, points


METHODS = {
    "numpy": run_numpy,
    "faiss_flat": run_faiss_flat,
    "scann_service": run_scann_service,
    "scann": run_scann_direct,
    "hnsw": run_hnsw,
    "ivfpq_fs": run_ivfpq_fs,
    "interleaved": run_interleaved,
    "large_k": run_large_k,
}


def worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())

    def log(msg):
        print(f"[{spec['label']} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    base = np.load(spec["base"])
    if spec.get("n_subset"):
        base = np.ascontiguousarray(base[: spec["n_subset"]])
    queries = np.load(spec["queries"])
    gt = np.load(spec["gt"])
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(spec["threads"])
    rss0, _ = rss_bytes()
    peak_reset = reset_peak_rss()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    build, points = METHODS[spec["method"]](spec, base, queries, gt, log)
    rss1, hwm1 = _BUILT["rss"], _BUILT["hwm"]
    rss_end, hwm_end = rss_bytes()
    n = len(base)
    result = {
        "method": spec["method"],
        "label": spec["label"],
        "n": n,
        **build,
        "rss_delta_bytes_per_vector": round((rss1 - rss0) / n, 1),
        "peak_rss_delta_during_build_bytes_per_vector": round((hwm1 - rss0) / n, 1)
        if peak_reset
        else None,
        "rss_delta_after_searches_bytes_per_vector": round((rss_end - rss0) / n, 1),
        "peak_rss_delta_overall_bytes_per_vector": round((hwm_end - rss0) / n, 1)
        if peak_reset
        else None,
        "points": points,
        "wall_s": round(time.perf_counter() - t0, 1),
        "load_avg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "threadpools": [
            {k: v for k, v in info.items() if k in ("internal_api", "num_threads", "version")}
            for info in threadpool_info()
        ],
    }
    Path(spec["out"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------
# driver


def plateaued(recalls: list[float]) -> bool:
    """Stop raising a search-breadth knob once recall is ~1 or has stopped improving
    (two steps in a row gaining < 0.0005: the quantiser, not the breadth, limits it)."""
    if recalls and recalls[-1] >= 0.999:
        return True
    return len(recalls) >= 3 and all(recalls[i] - recalls[i - 1] < 0.0005 for i in (-1, -2))


def best_at(points, recall):
    ok = [p for p in points if p["recall"] >= recall]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def config_name(args) -> str:
    n = (
        f"{args.n // 1_000_000}M"
        if args.n % 1_000_000 == 0
        else (f"{args.n // 1000}k" if args.n % 1000 == 0 else str(args.n))
    )
    sub = ""
    if args.subset and args.subset < args.n:
        sub = f"_first{args.subset // 1000}k" if args.subset % 1000 == 0 else f"_first{args.subset}"
    return f"{'uniform' if args.uniform else 'mixture'}_{n}x{args.dims}{sub}" + (
        "_quick" if args.quick else ""
    )


def prepare_data(args, cache: Path, log) -> dict:
    tag = (
        f"{'u' if args.uniform else 'm'}{args.n}x{args.dims}c{args.clusters}s{args.seed}q{args.nq}"
    )
    paths = {name: cache / f"{tag}_{name}.npy" for name in ("base", "queries", "gt")}
    stats_path = cache / f"{tag}_stats.json"
    if all(p.exists() for p in paths.values()) and stats_path.exists():
        log(f"data from cache {cache}/{tag}_*")
        return {"paths": paths, **json.loads(stats_path.read_text())}
    t0 = time.perf_counter()
    if args.uniform:
        base = uniform_sphere(args.n, args.dims, args.seed)
        queries = uniform_sphere(args.nq, args.dims, args.seed + 1)
        base_labels = query_labels = None
        generator = {"kind": "uniform on the unit sphere (worst case)"}
    else:
        model = MixtureModel(args.dims, args.clusters, args.seed)
        base, base_labels = model.sample(args.n, args.seed + 1)
        queries, query_labels = model.sample(args.nq, args.seed + 2)
        generator = {
            "kind": "Gaussian mixture (MixtureModel)",
            "clusters": args.clusters,
            "rank": model.rank,
            "noise": model.noise,
            "low_rank_share": model.low_rank_share,
            "cluster_size_min_max": [
                int(x)
                for x in (
                    np.bincount(base_labels, minlength=args.clusters).min(),
                    np.bincount(base_labels).max(),
                )
            ],
        }
    gen_s = time.perf_counter() - t0
    log(f"generated {args.n} x {args.dims} in {gen_s:.1f} s; exact ground truth ...")
    t0 = time.perf_counter()
    with _blas_threads(args.threads):
        gt_ids, gt_scores = exact_topk(base, queries, K)
    gt_s = time.perf_counter() - t0
    stats = data_stats(base, queries, base_labels, query_labels, gt_ids, gt_scores)
    log(f"ground truth in {gt_s:.1f} s; {stats}")
    np.save(paths["base"], base)
    np.save(paths["queries"], queries)
    np.save(paths["gt"], gt_ids)
    info = {
        "generator": generator,
        "data_stats": stats,
        "generate_s": round(gen_s, 1),
        "ground_truth_s": round(gt_s, 1),
        "seed": args.seed,
    }
    stats_path.write_text(json.dumps(info))
    return {"paths": paths, **info}


class _blas_threads:
    def __init__(self, n):
        from threadpoolctl import threadpool_limits

        self.ctx = threadpool_limits(n, user_api="blas")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ctx.restore_original_limits()


def run_worker(method, label, args, data, params=None, n_subset=None, log=print):
    spec = {
        "method": method,
        "label": label,
        "threads": args.threads,
        "k": K,
        "base": str(data["paths"]["base"]),
        "queries": str(data["paths"]["queries"]),
        "gt": str(data["paths"]["gt"]),
        "params": params or {},
        "repeats": args.repeats,
        "sweep_repeats": args.sweep_repeats,
        "single": args.single,
        "bf_queries": min(args.nq, args.bf_queries),
        "bf_single": args.bf_single,
        "scann_leaf_fractions": args.scann_leaf_fractions,
        "scann_reorder": args.scann_reorder,
        "hnsw_ef": args.hnsw_ef,
        "ivf_nprobe": args.ivf_nprobe,
        "ivf_k_factor": args.ivf_k_factor,
    }
    if n_subset:
        spec["n_subset"] = n_subset
        spec["gt"] = str(data["subset_gt"][n_subset])
    with tempfile.TemporaryDirectory() as tmp:
        spec["out"] = str(Path(tmp) / "result.json")
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "OPENBLAS_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads),
        }
        log(f"--- {label}")
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(spec_path)],
            env=env,
            timeout=args.worker_timeout,
        )
        if proc.returncode != 0 or not Path(spec["out"]).exists():
            log(f"{label} failed with exit code {proc.returncode}")
            return {"method": method, "label": label, "error": f"exit {proc.returncode}"}
        return json.loads(Path(spec["out"]).read_text())


def parse_variants(text: str) -> list[dict]:
    """ "num_leaves=2000,dims_per_block=2;num_leaves=4000" -> list of param dicts."""
    out = []
    for part in filter(None, (t.strip() for t in text.split(";"))):
        d = {}
        for kv in part.split(","):
            key, value = kv.split("=")
            value = value.strip()
            d[key.strip()] = (
                (value == "true")
                if value in ("true", "false")
                else (float(value) if "." in value else int(value))
            )
        out.append(d)
    return out


def summarise_interleaved(points: list[dict]) -> list[dict]:
    """Per (method, threads): the point with the best median QPS at recall >= target,
    against brute force at the same thread count (medians over the alternating rounds)."""
    out = []
    for t in sorted({p["threads"] for p in points}, reverse=True):
        bf = [p for p in points if p["threads"] == t and "brute" in p["method"]]
        for name in dict.fromkeys(p["method"] for p in points if "brute" not in p["method"]):
            ok = [
                p
                for p in points
                if p["threads"] == t and p["method"] == name and p["recall"] >= TARGET_RECALL
            ]
            if not ok:
                out.append({"method": name, "threads": t, "point": None})
                continue
            b = max(ok, key=lambda p: p["qps_median"])
            out.append(
                {
                    "method": name,
                    "threads": t,
                    "point": b,
                    "x_brute_force_median": round(b["qps_median"] / bf[0]["qps_median"], 1)
                    if bf
                    else None,
                    "x_brute_force_cpu": round(bf[0]["cpu_ms_per_query"] / b["cpu_ms_per_query"], 1)
                    if bf
                    else None,
                    "brute_force": bf[0] if bf else None,
                }
            )
    return out


def summarise(results: list[dict], n: int) -> dict:
    """Brute-force reference and, per method, the best point at each recall level: by
    wall-clock QPS (the figure asked for) and by CPU time per query (robust to other load)."""
    bf = [p for r in results if r.get("method") == "numpy" and r.get("n") == n for p in r["points"]]
    exact = bf + [
        p
        for r in results
        if r.get("method") == "faiss_flat" and r.get("n") == n
        for p in r["points"]
    ]
    ref = max(bf, key=lambda p: p["qps"]) if bf else None
    best_exact = max(exact, key=lambda p: p["qps"]) if exact else None
    cpu_bf = [p for p in bf if p.get("cpu_ms_per_query")]
    ref_cpu = min(cpu_bf, key=lambda p: p["cpu_ms_per_query"]) if cpu_bf else None
    summary = {
        "brute_force_reference": ref,
        "fastest_exact": best_exact,
        "brute_force_reference_by_cpu": ref_cpu,
        "methods": {},
    }
    for r in results:
        if r.get("method") == "interleaved" and "points" in r:
            summary["interleaved"] = summarise_interleaved(r["points"])
        if (
            r.get("method") in ("numpy", "faiss_flat", "interleaved", "large_k")
            or "points" not in r
        ):
            continue
        same_n = r.get("n") == n
        points = [p for p in r["points"] if p["variant"] != "service_VectorIndex.search_1thread"]
        entry = {"n": r.get("n")}
        for level in (0.90, TARGET_RECALL, 0.99):
            b = best_at(points, level)
            entry[f"best_at_recall_{level}"] = b and {
                **b,
                "x_brute_force": round(b["qps"] / ref["qps"], 2) if ref and same_n else None,
                "x_fastest_exact": round(b["qps"] / best_exact["qps"], 2)
                if best_exact and same_n
                else None,
            }
            ok = [p for p in points if p["recall"] >= level and p.get("cpu_ms_per_query")]
            c = min(ok, key=lambda p: p["cpu_ms_per_query"]) if ok else None
            entry[f"least_cpu_at_recall_{level}"] = c and {
                **c,
                "x_brute_force_cpu": round(ref_cpu["cpu_ms_per_query"] / c["cpu_ms_per_query"], 2)
                if ref_cpu and same_n
                else None,
            }
        summary["methods"][r["label"]] = entry
    return summary


def bytes_fmt(r):
    v = r.get("rss_delta_bytes_per_vector")
    return "–" if v is None else f"{v:,.0f}"


def _fmt_params(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def verdict(res: dict) -> list[str]:
    """Target check: ScaNN recall@10 >= 0.95 at >= 10x brute force and >= faiss QPS."""
    cfg, summ = res["config"], res["summary"]
    ref = summ["brute_force_reference"]
    same_n = {r["label"] for r in res["results"] if r.get("n") == cfg["n"]}
    best = {}
    for label, entry in summ["methods"].items():
        b = entry.get(f"best_at_recall_{TARGET_RECALL}")
        if b and label in same_n:
            best[label] = b
    scann = {k: v for k, v in best.items() if "ScaNN" in k or "scann" in k}
    lines = []
    if not ref:
        return lines
    for e in summ.get("interleaved") or []:
        pt = e["point"]
        if not pt:
            lines.append(
                f"- Interleaved, {e['threads']} thread(s): {e['method']} reached no "
                f"recall ≥ {TARGET_RECALL} among its points."
            )
            continue
        rival = [
            x
            for x in summ["interleaved"]
            if x["threads"] == e["threads"] and x["method"] != e["method"] and x["point"]
        ]
        vs = "".join(
            f"; ScaNN / {x['method']} = "
            f"{pt['qps_median'] / x['point']['qps_median']:.2f} (median QPS)"
            for x in rival
            if "ScaNN" in e["method"]
        )
        lines.append(
            f"- Interleaved, {e['threads']} thread(s): {e['method']} recall "
            f"{pt['recall']:.3f} at {pt['qps_median']:,.0f} QPS (median) = "
            f"{e['x_brute_force_median']}× brute force ({_fmt_params(pt['params'])})"
            f"{vs}."
        )
    if lines:
        lines.append(
            "- Separate sweeps below were run at different loads; their QPS "
            "ratios across methods are indicative only."
        )
    for label, b in sorted(scann.items(), key=lambda kv: -kv[1]["qps"]):
        x = b["qps"] / ref["qps"]
        c = summ["methods"][label].get(f"least_cpu_at_recall_{TARGET_RECALL}")
        cpu = (
            f"; by CPU time per query {c['x_brute_force_cpu']}× ({_fmt_params(c['params'])})"
            if c and c.get("x_brute_force_cpu")
            else ""
        )
        lines.append(
            f"- {label}: recall {b['recall']:.3f} at {b['qps']:,.0f} QPS = {x:.1f}× "
            f"brute force ({_fmt_params(b['params'])}){cpu} → 10× target "
            f"{'met' if x >= TARGET_SPEEDUP else 'NOT met'} (wall clock)."
        )
    others = {k: v for k, v in best.items() if k not in scann}
    top_scann = max(scann.values(), key=lambda b: b["qps"], default=None)
    for label, b in others.items():
        if top_scann and not summ.get("interleaved"):
            lines.append(
                f"- {label} at recall ≥ {TARGET_RECALL}: {b['qps']:,.0f} QPS "
                f"({_fmt_params(b['params'])}); best ScaNN / this = "
                f"{top_scann['qps'] / b['qps']:.2f}."
            )
    for r in res["results"]:
        if r.get("n") != cfg["n"] and "points" in r:
            lines.append(
                f"- {r['label']} was run on N = {r['n']:,} only (see its own "
                "table), so it is not compared at this N."
            )
    for label in summ["methods"]:
        if label in same_n and label not in best:
            lines.append(f"- {label}: no swept point reached recall {TARGET_RECALL}.")
    return lines


def interleaved_table(res: dict, inter: list[dict]) -> list[str]:
    r = next(x for x in res["results"] if x["method"] == "interleaved")
    rounds = len(r["points"][0]["qps_runs"]) if r["points"] else 0
    lines = [
        "",
        f"**Head-to-head, interleaved** (one process holds all the indexes and "
        f"measures them in {rounds} alternating rounds, at {res['config']['threads']} "
        "threads and at 1 thread, so the other processes' load falls on all alike; "
        "QPS = median over the rounds, best in brackets; brute force = numpy_blocked "
        f"over {r['points'][0].get('nq', '?')} queries, the others over "
        f"{r['points'][-1].get('nq', '?')}). Fastest point at recall ≥ "
        f"{TARGET_RECALL} per method:",
        "",
        "| method | threads | params | recall@10 | QPS median (best) | CPU ms/q "
        "| × BF (median QPS) | × BF (CPU) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    shown_bf = set()
    for e in inter:
        bf = e.get("brute_force")
        if bf and e["threads"] not in shown_bf:
            shown_bf.add(e["threads"])
            lines.append(
                f"| exact numpy_blocked | {e['threads']} | – | {bf['recall']:.3f} | "
                f"{bf['qps_median']:,.0f} ({bf['qps']:,.0f}) | "
                f"{bf['cpu_ms_per_query']} | 1.0 | 1.0 |"
            )
        p = e["point"]
        if not p:
            lines.append(
                f"| {e['method']} | {e['threads']} | no point reached {TARGET_RECALL} ||||||"
            )
            continue
        lines.append(
            f"| {e['method']} | {e['threads']} | {_fmt_params(p['params'])} | "
            f"{p['recall']:.3f} | {p['qps_median']:,.0f} ({p['qps']:,.0f}) | "
            f"{p['cpu_ms_per_query']} | {e['x_brute_force_median']} | "
            f"{e['x_brute_force_cpu']} |"
        )
    lines += ["", "All interleaved points (recall@10: QPS median):", ""]
    by = {}
    for p in r["points"]:
        by.setdefault((p["method"], p["threads"]), []).append(
            f"{_fmt_params(p['params']) or 'exact'} → {p['recall']:.3f}: {p['qps_median']:,.0f}"
        )
    for (name, t), items in by.items():
        lines.append(f"- {name} @ {t} thread(s): " + "; ".join(items))
    return lines


def markdown_section(files: list[Path]) -> str:
    lines = [
        "## ANN index: recall@10 and queries/s on one shard",
        "",
        "Generated by `bench/ann_recall.py`; every number below was measured by it "
        "(the JSON is named under each table). Single shard, synthetic L2-normalised "
        "float32 vectors, inner product, k = 10, 1,000 queries drawn from the same "
        "distribution as (not from) the database, ground truth by exact search.",
        "",
        "- **QPS**: queries/s in batches of 100, fastest of the repeats. The 2-core "
        "machine was shared with other people's processes; **load** is the 1-minute load "
        "average before → after each index's run, and wall-clock QPS of runs made at "
        "different loads differ by 2–3× for the same index, so compare methods in the "
        "**interleaved head-to-head** tables (all indexes in one process, measured in "
        "alternating rounds). **CPU ms/q**: process CPU time (all threads) per query, "
        "least of the repeats; less load-dependent than QPS, but at 2 threads it "
        "includes OpenMP/OpenBLAS spin-waiting, which grows with contention (faiss, "
        "numpy). **p50**: one query at a time.",
        "- **bytes/vector**: RSS after build − RSS before, / N, in a fresh process per "
        "index (includes the index's own float32 copy where it keeps one, and memory "
        "the allocator kept; for `VectorIndex` also its own dense matrix, grown by "
        "doubling, ids and metadata). **× BF**: QPS / QPS of the faster numpy/BLAS "
        "brute force.",
        "- The mixture's clusters are well separated (nearly all true neighbours lie in "
        "the query's own cluster), which suits partitioned indexes (ScaNN, IVF); real "
        "embeddings are likely harder, the uniform case is the opposite extreme.",
        "- Threads: the same count for every method: OMP/OpenBLAS env vars + "
        "threadpoolctl, `faiss.omp_set_num_threads`, ScaNN `set_num_threads` + "
        "`search_batched_parallel`, numpy_blocked = Python threads over database "
        "blocks with 1 BLAS thread each. Exception, labelled: `VectorIndex.search` is "
        "what the service calls (`search_batched`, one thread).",
        "",
    ]
    for path in files:
        res = json.loads(path.read_text())
        cfg, summ = res["config"], res["summary"]
        ref = summ["brute_force_reference"]
        gen = res["data"]["generator"]
        stats = res["data"]["data_stats"]
        sub = (
            f" (the first {cfg['n']:,} of {cfg['generated_n']:,} generated)"
            if cfg.get("generated_n", cfg["n"]) != cfg["n"]
            else ""
        )
        lines += [
            f"### {cfg['dims']}-d, N = {cfg['n']:,}{sub}: {cfg['data']}"
            + ("" if path.stem == f"ann_recall_{cfg['name']}" else f" (`{path.name}`)"),
            "",
            f"{res['machine']['cpu']}, {res['machine']['cpus']} cores, "
            f"{cfg['threads']} threads for every method, {cfg['nq']} queries, "
            f"{res['date']}; scann {res['machine']['versions'].get('scann')}, "
            f"faiss-cpu {res['machine']['versions'].get('faiss-cpu')}; "
            f"`bench/results/{path.name}`.",
            f"Data: {gen.get('kind')}"
            + (f", {gen['clusters']} clusters" if "clusters" in gen else "")
            + f"; mean cosine to the 1st / 10th neighbour {stats['cos_top1_mean']} / "
            f"{stats['cos_top10_mean']}, random pair {stats['cos_random_pair_mean']}, "
            f"relative contrast (mean distance / 10th-neighbour distance) "
            f"{stats['relative_contrast_10']}"
            + (
                f"; share of the true top-10 inside the query's own cluster "
                f"{stats['gt_share_in_query_cluster']}"
                if "gt_share_in_query_cluster" in stats
                else ""
            )
            + (f" (statistics of the {cfg['generated_n']:,} generated)" if sub else "")
            + ".",
            "",
            *[f"- Note: {note}" for note in res.get("notes", [])],
            *([""] if res.get("notes") else []),
            "| method | build params | search params | build s | bytes/vector "
            "| recall@10 | QPS | CPU ms/q | p50 ms | × BF | load |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def row(name, r, p, build_p="", note="", ref=ref, cfg=cfg):
            x = f"{p['qps'] / ref['qps']:.1f}" if ref and r["n"] == cfg["n"] else "n/a"
            la = r.get("load_avg_1min_before_after") or []
            load = "→".join(f"{v:.0f}" for v in la) or "–"
            return (
                f"| {name}{note} | {build_p} | {_fmt_params(p['params']) or '–'} | "
                f"{r.get('build_s', 0)} | {bytes_fmt(r)} | {p['recall']:.3f} | "
                f"{p['qps']:,.0f} | {p.get('cpu_ms_per_query', '–')} | {p['p50_ms']} | "
                f"{x} | {load} |"
            )

        for r in res["results"]:
            if "points" not in r:
                lines.append(f"| {r['label']} | failed: {r.get('error')} ||||||||||")
                continue
            if r["method"] in ("interleaved", "large_k"):
                continue
            note = "" if r["n"] == cfg["n"] else f" (**N = {r['n']:,}**)"
            build_p = _fmt_params(r.get("build_params") or {})
            if "scann_params_for" in r:
                sp = r["scann_params_for"]
                build_p = (
                    f"scann_params_for: num_leaves={sp['num_leaves']}, "
                    f"dims_per_block={sp['dims_per_block']}, "
                    f"aq_threshold={sp['anisotropic_quantization_threshold']}"
                )
            if r["method"] in ("numpy", "faiss_flat"):
                for p in r["points"]:
                    lines.append(row(f"exact {p['variant']}", r, p, note=note))
                continue
            for p in r["points"]:
                if p["variant"] == "service_VectorIndex.search_1thread":
                    lines.append(
                        row(
                            f"{r['label']}: service default, VectorIndex.search (1 thread)",
                            r,
                            p,
                            build_p,
                            note,
                        )
                    )
                elif p["variant"] == "default_params_parallel":
                    lines.append(
                        row(
                            f"{r['label']}: service default params, {cfg['threads']} threads",
                            r,
                            p,
                            build_p,
                            note,
                        )
                    )
            sweep = [p for p in r["points"] if p["variant"] == "sweep"]
            b = best_at(sweep, TARGET_RECALL)
            if b:
                lines.append(
                    row(f"{r['label']}: best QPS at recall ≥ {TARGET_RECALL}", r, b, build_p, note)
                )
            elif sweep:
                hi = max(sweep, key=lambda p: (p["recall"], p["qps"]))
                lines.append(row(f"{r['label']}: highest recall swept", r, hi, build_p, note))
        ref_cpu = summ.get("brute_force_reference_by_cpu")
        lines += [
            "",
            "Best QPS (its recall@10) at a recall level, over each method's sweep; "
            "last column: the sweep point with the least CPU time per query at recall "
            "≥ 0.95, and brute force's least CPU time per query over it"
            + (f" (brute force: {ref_cpu['cpu_ms_per_query']} ms/q)" if ref_cpu else "")
            + ":",
            "",
            "| method | N | recall ≥ 0.90 | ≥ 0.95 | ≥ 0.99 | ≥ 0.95 by CPU: ms/q, × BF |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        n_of = {r["label"]: r.get("n") for r in res["results"]}
        for label, entry in summ["methods"].items():
            cells = []
            for level in (0.90, TARGET_RECALL, 0.99):
                b = entry[f"best_at_recall_{level}"]
                cells.append("–" if not b else f"{b['qps']:,.0f} ({b['recall']:.3f})")
            c = entry.get(f"least_cpu_at_recall_{TARGET_RECALL}")
            cells.append(
                "–"
                if not c
                else f"{c['cpu_ms_per_query']} ({_fmt_params(c['params'])})"
                + (f", {c['x_brute_force_cpu']}×" if c.get("x_brute_force_cpu") else "")
            )
            lines.append(f"| {label} | {n_of.get(label, 0):,} | " + " | ".join(cells) + " |")
        inter = summ.get("interleaved")
        if inter:
            lines += interleaved_table(res, inter)
        lk = next(
            (r for r in res["results"] if r.get("method") == "large_k" and "points" in r), None
        )
        if lk:
            lines += [
                "",
                f"**Large k** (N = {lk['n']:,}, 100 queries): recall@k of "
                "`VectorIndex.search` against exact top-k, and of the same ScaNN searcher "
                "asked with pre_reorder_num_neighbors = max(200, 2k) at the default and "
                "at 4× the default leaves_to_search:",
                "",
                "| k | VectorIndex.search | pre_reorder=max(200,2k) | same, 4× leaves |",
                "|---:|---:|---:|---:|",
            ]
            for k in dict.fromkeys(p["k"] for p in lk["points"]):
                cells = [f"{p['recall']:.3f}" for p in lk["points"] if p["k"] == k]
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
        v = verdict(res)
        if v:
            lines += [
                "",
                "Against the targets (recall@10 ≥ 0.95 at ≥ 10× brute-force QPS, "
                "and at least faiss's QPS at that recall):",
                "",
                *v,
            ]
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--nq", type=int, default=1000, help="queries (recall and QPS)")
    ap.add_argument(
        "--clusters",
        type=int,
        default=0,
        help="mixture components (default: N / 250, clamped to 100..4000)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--uniform", action="store_true", help="worst case: uniform on the sphere")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--methods", default="numpy,faiss_flat,scann_service,scann,ivfpq_fs,hnsw")
    ap.add_argument(
        "--scann-variants",
        default="",
        help="';'-separated direct ScaNN builds, e.g. 'num_leaves=2000;num_leaves="
        "2000,dims_per_block=4' (default: num_leaves=2*sqrt(N), max 4000)",
    )
    ap.add_argument(
        "--ivf-variants",
        default="",
        help="';'-separated, e.g. 'nlist=1024;nlist=4096,m=64' (default: nlist="
        "ScaNN's num_leaves rounded to a power of 2, m=d/2)",
    )
    ap.add_argument("--interleave-nlist", type=int, default=1024)
    ap.add_argument("--interleave-rounds", type=int, default=3)
    ap.add_argument(
        "--interleave-scann",
        default="3:30,5:30,5:50,8:50,10:50,50:200",
        help="leaves_to_search:pre_reorder points for method 'interleaved'",
    )
    ap.add_argument(
        "--interleave-ivf",
        default="1:5,2:5,3:5,4:5,2:10,4:10,8:10",
        help="nprobe:k_factor points for method 'interleaved'",
    )
    ap.add_argument(
        "--interleave-hnsw",
        default="",
        help="a faiss HNSW index file (from --hnsw-save) to add to method 'interleaved'",
    )
    ap.add_argument("--interleave-hnsw-ef", default="16,24,32,48,64")
    ap.add_argument("--hnsw-n", type=int, default=0, help="build HNSW on the first N only")
    ap.add_argument("--hnsw-save", default="", help="write the built HNSW index to this file")
    ap.add_argument(
        "--subset",
        type=int,
        default=0,
        help="run every method on the first SUBSET vectors of the N generated",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep-repeats", type=int, default=2)
    ap.add_argument("--single", type=int, default=200, help="single queries for latency")
    ap.add_argument("--bf-queries", type=int, default=500)
    ap.add_argument("--bf-single", type=int, default=20)
    ap.add_argument("--scann-leaf-fractions", default="0.005,0.01,0.02,0.03,0.05,0.075,0.1,0.15")
    ap.add_argument("--scann-reorder", default="50,100,200,400")
    ap.add_argument("--hnsw-ef", default="16,24,32,48,64,96,128,192,256,384,512")
    ap.add_argument("--ivf-nprobe", default="4,8,12,16,24,32,48,64,96,128")
    ap.add_argument("--ivf-k-factor", default="5,10,20,40")
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer repeats and points")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "visearch_ann_cache"))
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other methods' results already in the output JSON",
    )
    ap.add_argument(
        "--markdown",
        action="store_true",
        help=f"rewrite {DOC.relative_to(ROOT)} from bench/results/ann_recall_*.json",
    )
    ap.add_argument("--worker-timeout", type=int, default=3600)
    ap.add_argument(
        "--report",
        action="store_true",
        help="run nothing: re-summarise bench/results/ann_recall_*.json and rewrite the markdown",
    )
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker)
        return
    if args.report:
        files = sorted(p for p in RESULTS.glob("ann_recall_*.json") if "_quick" not in p.name)
        for path in files:
            res = json.loads(path.read_text())
            res["summary"] = summarise(res["results"], res["config"]["n"])
            path.write_text(json.dumps(res, indent=1))
        DOC.write_text(markdown_section(files))
        print(f"rewrote {DOC} from {[p.name for p in files]}")
        return
    if args.quick:
        args.repeats, args.sweep_repeats, args.single = 1, 1, 50
        args.nq = min(args.nq, 300)
        args.bf_queries, args.bf_single = min(args.bf_queries, 200), 5
        args.scann_leaf_fractions = "0.01,0.05,0.15"
        args.scann_reorder = "100,200"
        args.hnsw_ef = "16,64,256"
        args.ivf_nprobe = "4,16,64"
        args.ivf_k_factor = "10"
    args.clusters = args.clusters or min(4000, max(100, args.n // 250))
    args.scann_leaf_fractions = [float(x) for x in args.scann_leaf_fractions.split(",")]
    for name in ("scann_reorder", "hnsw_ef", "ivf_nprobe", "ivf_k_factor"):
        setattr(args, name, [int(x) for x in getattr(args, name).split(",")])
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args, cache, log)
    data["subset_gt"] = {}
    for size in {args.hnsw_n, args.subset}:
        if not size or size >= args.n:
            continue
        base = np.load(data["paths"]["base"], mmap_mode="r")[:size]
        path = Path(str(data["paths"]["gt"]).replace("_gt.npy", f"_gt_first{size}.npy"))
        if not path.exists():
            with _blas_threads(args.threads):
                np.save(
                    path,
                    exact_topk(np.ascontiguousarray(base), np.load(data["paths"]["queries"]), K)[0],
                )
        data["subset_gt"][size] = path
    subset = args.subset if args.subset and args.subset < args.n else None
    n_eff = subset or args.n
    scann_leaves = max(16, min(4000, int(math.sqrt(n_eff))))
    results = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method == "scann":
            for params in parse_variants(args.scann_variants) or [
                {"num_leaves": min(4000, 2 * scann_leaves)}
            ]:
                label = "scann direct " + ",".join(f"{k}={v}" for k, v in params.items())
                results.append(run_worker("scann", label, args, data, params, subset, log=log))
        elif method == "ivfpq_fs":
            variants = parse_variants(args.ivf_variants) or [
                {"nlist": 2 ** round(math.log2(scann_leaves))}
            ]
            for params in variants:
                label = "faiss IVF-PQ fast-scan + RFlat " + ",".join(
                    f"{k}={v}" for k, v in params.items()
                )
                results.append(run_worker("ivfpq_fs", label, args, data, params, subset, log=log))
        elif method == "interleaved":
            params = {
                "nlist": args.interleave_nlist,
                "rounds": args.interleave_rounds,
                "scann_points": [
                    tuple(map(int, x.split(":"))) for x in args.interleave_scann.split(",")
                ],
                "ivf_points": [
                    tuple(map(int, x.split(":"))) for x in args.interleave_ivf.split(",")
                ],
                "hnsw_index": args.interleave_hnsw,
                "hnsw_points": [int(x) for x in args.interleave_hnsw_ef.split(",")],
            }
            results.append(
                run_worker(
                    "interleaved", "interleaved head-to-head", args, data, params, subset, log=log
                )
            )
        elif method == "large_k":
            results.append(
                run_worker(
                    "large_k",
                    "large k through VectorIndex",
                    args,
                    data,
                    {"ks": [10, 100, 200, 500, 1000], "queries": 100},
                    subset,
                    log=log,
                )
            )
        elif method == "hnsw":
            n_sub = args.hnsw_n if args.hnsw_n and args.hnsw_n < n_eff else subset
            results.append(
                run_worker(
                    "hnsw",
                    "faiss HNSW M=32,efC=200",
                    args,
                    data,
                    {"M": 32, "efConstruction": 200, "save": args.hnsw_save},
                    n_subset=n_sub,
                    log=log,
                )
            )
        else:
            label = {
                "numpy": "brute force numpy",
                "faiss_flat": "faiss IndexFlatIP",
                "scann_service": "ScaNN via VectorIndex (service)",
            }[method]
            results.append(run_worker(method, label, args, data, n_subset=subset, log=log))
        r = results[-1]
        if "points" in r:
            log(
                f"{r['label']}: build {r.get('build_s')} s, "
                f"{r['rss_delta_bytes_per_vector']} B/vector, wall {r['wall_s']} s"
            )
    path = Path(args.out) if args.out else RESULTS / f"ann_recall_{config_name(args)}.json"
    previous_runs, new_labels, notes = [], [r["label"] for r in results], []
    if args.merge and path.exists():
        previous = json.loads(path.read_text())
        results = [r for r in previous["results"] if r["label"] not in new_labels] + results
        previous_runs = previous.get("runs", [])
        notes = previous.get("notes", [])
    summary = summarise(results, n_eff)
    out = {
        "config": {
            "name": config_name(args),
            "n": n_eff,
            "generated_n": args.n,
            "dims": args.dims,
            "nq": args.nq,
            "k": K,
            "threads": args.threads,
            "batch": BATCH,
            "data": "uniform on the sphere (worst case)"
            if args.uniform
            else f"Gaussian mixture, {args.clusters} clusters",
            "hnsw_n": args.hnsw_n or n_eff,
            "quick": args.quick,
            "argv": sys.argv[1:],
        },
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "versions": _versions(),
            "mem_total_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
            ),
        },
        "service_code": _service_code(),
        "data": {k: v for k, v in data.items() if k not in ("paths", "subset_gt")},
        "results": results,
        "summary": summary,
        "total_wall_s": round(time.perf_counter() - start, 1),
        "notes": notes,
        "runs": previous_runs
        + [
            {
                "argv": sys.argv[1:],
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "wall_s": round(time.perf_counter() - start, 1),
                "labels": new_labels,
            }
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    log(f"wrote {path}")
    print(json.dumps(summary, indent=1))
    if args.markdown:
        files = sorted(p for p in RESULTS.glob("ann_recall_*.json") if "_quick" not in p.name)
        DOC.write_text(markdown_section(files))
        log(f"wrote {DOC}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _service_code() -> dict:
    """Which services/indexer/vector_index.py was measured (read-only git queries)."""
    import hashlib

    path = ROOT / "services" / "indexer" / "vector_index.py"
    out = {"vector_index_sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    try:
        out["git_head"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        out["vector_index_modified_in_worktree"] = (
            subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(path)], cwd=ROOT).returncode
            != 0
        )
    except OSError:
        pass
    return out


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("scann", "faiss-cpu", "threadpoolctl"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    main()
