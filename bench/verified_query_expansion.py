"""Spatially verified query expansion on the dev sets, in process: geometric vs geometric + SVQE.

    nice -n 10 .venv/bin/python bench/verified_query_expansion.py [--depth 50] [--out JSON]

Same protocols and cached embeddings as bench/query_expansion.py. Per query: brute-force global
ranking; the best --depth candidates are verified with RootSIFT (services/embedder/rootsift.py,
the embedder's defaults) and the verifier's own geometry and fusion (default settings,
services/verifier/geometry.py, fusion.py), re-ranked by fused score, the rest kept in global
order (``geometric``). ``geometric+verified_qe`` then does what the gateway does
(services/gateway/core.py _verified_expanded): hits with more inliers than the minimum stay on
top in their order, and the rest of the database follows in the order of
normalise(q + sum of the verified vectors, at most MAX_VERIFIED). mAP is over the whole ranking.
ukbench1000 uses every 4th image as a query (250, one per object) against all 1,000.
Writes bench/results/query_expansion_verified.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.query_expansion import (  # noqa: E402
    DEFAULT_CACHE,
    DEFAULT_MODEL,
    LIMITS,
    Protocol,
    paris,
    scores,
    smvs,
    ukbench,
)
from services.common.imaging import decode_rgb  # noqa: E402
from services.common.local_features import LocalFeatures  # noqa: E402
from services.common.model_registry import load_local  # noqa: E402
from services.embedder.core import GlobalModel, create_session  # noqa: E402
from services.embedder.rootsift import extract_rootsift  # noqa: E402
from services.gateway.query_expansion import (  # noqa: E402
    DEFAULT_VERIFIED_MIN_INLIERS,
    MAX_VERIFIED,
    expand_one,
    is_verified,
)
from services.verifier.fusion import FusionSettings, fused_score  # noqa: E402
from services.verifier.geometry import (  # noqa: E402
    GeometricEvidence,
    GeometrySettings,
    verify_pair,
)

DEFAULT_OUT = ROOT / "bench" / "results" / "query_expansion_verified.json"
UKBENCH_QUERY_STEP = 4
WORKERS = 2

ImageKey = tuple[Path, tuple[int, ...] | None]


class Features:
    """RootSIFT per (path, crop), cached in memory and on disk."""

    def __init__(self, cache: Path) -> None:
        self._dir = cache / "rootsift"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._memory: dict[ImageKey, LocalFeatures] = {}

    def get(self, key: ImageKey) -> LocalFeatures:
        if key in self._memory:
            return self._memory[key]
        path, crop = key
        name = path.stem + ("" if crop is None else "_crop")
        file = self._dir / f"{path.parent.parent.name}_{name}.npz"
        if file.exists():
            features = LocalFeatures.from_npz(file.read_bytes())
        else:
            rgb = decode_rgb(path.read_bytes(), LIMITS)
            if crop is not None:
                x1, y1, x2, y2 = crop
                rgb = rgb[y1:y2, x1:x2]
            features = extract_rootsift(rgb)
            file.write_bytes(features.to_npz())
        self._memory[key] = features
        return features


def evidence_for(
    protocol: Protocol,
    sims: np.ndarray,
    depth: int,
    features: Features,
    pair_cache: dict[tuple[ImageKey, Path], int],
) -> tuple[np.ndarray, np.ndarray]:
    """Global order int [q, g] and inliers int [q, depth] of each query's first candidates."""
    order = np.argsort(-sims, axis=1, kind="stable")
    geometry = GeometrySettings()
    jobs = []
    for i in range(len(order)):
        for j in order[i, :depth]:
            jobs.append((protocol.query_images[i], protocol.database_images[j]))
    todo = sorted({job for job in jobs if job not in pair_cache}, key=str)

    def verify(job: tuple[ImageKey, Path]) -> int:
        query_key, path = job
        return verify_pair(features.get(query_key), features.get((path, None)), geometry).inliers

    for key in {key for job in todo for key in (job[0], (job[1], None))}:
        features.get(key)  # extract serially: OpenCV SIFT uses its own threads
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(WORKERS) as pool:
        for job, inliers in zip(todo, pool.map(verify, todo), strict=True):
            pair_cache[job] = inliers
    inliers = np.array([pair_cache[job] for job in jobs]).reshape(len(order), depth)
    return order, inliers


def rankings(
    protocol: Protocol, depth: int, features: Features, pair_cache: dict, min_inliers: int
) -> dict:
    """Pseudo-similarities float [q, g] (higher = earlier) of none, geometric, geometric+SVQE
    (trusting hits with more than min_inliers inliers)."""
    sims = protocol.queries @ protocol.database.T
    sims[protocol.excluded] = -np.inf
    order, inliers = evidence_for(protocol, sims, depth, features, pair_cache)
    fusion = FusionSettings()
    n_db = sims.shape[1]
    geometric = np.zeros_like(sims)
    expanded = np.zeros_like(sims)
    triggered, used, wrong = 0, [], 0
    for i in range(len(order)):
        candidates = order[i, :depth]
        fused = [
            fused_score(sims[i, c], _evidence(inliers[i, p]), fusion)
            for p, c in enumerate(candidates)
        ]
        reranked = [candidates[p] for p in sorted(range(depth), key=lambda p: (-fused[p], p))]
        ranking = [*reranked, *order[i, depth:]]
        geometric[i, ranking] = -np.arange(n_db)
        verified_inliers = {c: inliers[i, p] for p, c in enumerate(candidates)}
        verified = [
            c
            for c in reranked
            if is_verified(int(verified_inliers[c]), min_inliers) and not protocol.excluded[i, c]
        ]
        if not verified:
            expanded[i] = geometric[i]
            continue
        triggered += 1
        used.append(min(len(verified), MAX_VERIFIED))
        wrong += sum(1 for c in verified if not (protocol.relevant[i, c] or protocol.junk[i, c]))
        combined = protocol.database[verified[:MAX_VERIFIED]]
        query = expand_one(protocol.queries[i], combined, np.ones(len(combined), np.float32), 0.0)
        second = protocol.database @ query
        second[protocol.excluded[i]] = -np.inf
        rest = [c for c in np.argsort(-second, kind="stable") if c not in set(verified)]
        expanded[i, [*verified, *rest]] = -np.arange(n_db)
    for matrix in (geometric, expanded):
        matrix[protocol.excluded] = -np.inf
    return {
        "none": sims,
        "geometric": geometric,
        "geometric+verified_qe": expanded,
        "_stats": {
            "queries": len(order),
            "queries_with_verified_results": triggered,
            "mean_verified_combined": round(float(np.mean(used)), 2) if used else 0.0,
            "verified_but_not_relevant": int(wrong),
        },
    }


def _evidence(inliers: int) -> GeometricEvidence:
    """Evidence with only the inlier count set: all the fusion reads."""
    return GeometricEvidence(inliers=int(inliers), matches=int(inliers), inlier_ratio=1.0)


def subset(protocol: Protocol, rows: np.ndarray) -> Protocol:
    return Protocol(
        protocol.name,
        protocol.queries[rows],
        protocol.database,
        protocol.relevant[rows],
        protocol.junk[rows],
        protocol.excluded[rows],
        {name: mask[rows] for name, mask in protocol.subsets.items()},
        protocol.ns_score,
        [protocol.query_images[r] for r in rows],
        protocol.database_images,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument(
        "--min-inliers",
        default=str(DEFAULT_VERIFIED_MIN_INLIERS),
        help="comma-separated: trust hits with more inliers than each (the first is the default)",
    )
    parser.add_argument("--protocols", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()
    thresholds = [int(v) for v in args.min_inliers.split(",")]
    wanted = set(filter(None, args.protocols.split(",")))
    manifest, model_path = load_local(args.model_dir)
    model = GlobalModel(manifest, create_session(model_path, ["CPUExecutionProvider"], 2))
    version = manifest.version
    protocols = [*smvs(model, args.cache, version), *paris(model, args.cache, version)]
    uk = [p for p in ukbench(model, args.cache, version) if p.name == "ukbench1000"][0]
    protocols.append(subset(uk, np.arange(0, len(uk.queries), UKBENCH_QUERY_STEP)))
    protocols = [p for p in protocols if not wanted or p.name in wanted]
    features = Features(args.cache)
    pair_file = args.cache / "rootsift_pair_inliers.json"
    stored = json.loads(pair_file.read_text()) if pair_file.exists() else {}
    pair_cache: dict = {}
    for key, inliers in stored.items():
        path, crop, other = json.loads(key)
        pair_cache[((Path(path), tuple(crop) if crop else None), Path(other))] = inliers
    results = {}
    for protocol in protocols:
        started = time.perf_counter()
        entry: dict = {}
        for position, threshold in enumerate(thresholds):
            ranked = rankings(protocol, args.depth, features, pair_cache, threshold)
            stats = ranked.pop("_stats")
            if position == 0:
                entry["modes"] = {mode: scores(protocol, sims) for mode, sims in ranked.items()}
                entry.update(stats)
            else:
                entry.setdefault("verified_qe_by_min_inliers", {})[str(threshold)] = {
                    **scores(protocol, ranked["geometric+verified_qe"]),
                    **{k: v for k, v in stats.items() if k != "queries"},
                }
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results[protocol.name] = entry
        print(protocol.name, json.dumps(entry), flush=True)
        pair_file.write_text(
            json.dumps(
                {
                    json.dumps([str(q[0]), list(q[1]) if q[1] else None, str(c)]): v
                    for (q, c), v in pair_cache.items()
                }
            )
        )
    report = {
        "command": "nice -n 10 .venv/bin/python bench/verified_query_expansion.py",
        "model_version": version,
        "depth": args.depth,
        "min_inliers": thresholds[0],
        "max_verified_combined": MAX_VERIFIED,
        "ukbench_queries": f"every {UKBENCH_QUERY_STEP}th image",
        "machine": platform.platform(),
        "results": results,
    }
    report["command"] = " ".join(["nice -n 10 .venv/bin/python", *sys.argv])
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
