"""Alpha query expansion on the dev sets, in process: none vs alpha-QE over a (top_n, alpha) grid.

    nice -n 10 .venv/bin/python bench/query_expansion.py [--model-dir DIR] [--out JSON]

Embeds each dev set once with the built ONNX global model (the embedder's own preprocessing:
services/embedder/core.py GlobalModel), caches the embeddings under --cache, then ranks the whole
database by cosine similarity (brute force, as an exact shard does) and runs
services/gateway/query_expansion.expand (the function the gateway calls) on the top_n results.

Protocols (shared/datasets/*/README.md):
* smvs_standard: 400 phone photos vs the 100 clean covers (one relevant each): P@1, mAP.
* smvs_all_vs_all: each of the 500 images vs the other 499 (4 relevant): P@1, mAP; mAP of the
  400 phone queries as well.
* paris6k_subset: the 11 official queries cropped to their boxes vs the other 249; junk ignored.
* ukbench1000: N-S score with the query in the database (the standard), and P@1 / mAP with the
  query removed from the database (as a new photo would be: it cannot expand with itself).
Also measured (not built in the service): database-side augmentation (alpha-DBA, each database
vector replaced by the alpha-QE of itself with its nearest other database vectors), alone and
with alpha-QE on top, on the protocols that remove no query from the database (elsewhere the
query itself would have been averaged into its neighbours).
Writes bench/results/query_expansion.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.imaging import ImageLimits, decode_rgb  # noqa: E402
from services.common.model_registry import load_local  # noqa: E402
from services.embedder.core import GlobalModel, create_session  # noqa: E402
from services.gateway.query_expansion import expand  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
DEFAULT_MODEL = ROOT / "models" / "global" / "mobilenetv2-gem-v1"
DEFAULT_OUT = ROOT / "bench" / "results" / "query_expansion.json"
DEFAULT_CACHE = Path("/tmp/visearch_qe_cache")
TOP_NS = (1, 2, 3, 5, 10, 20)
ALPHAS = (0.0, 1.0, 3.0, 5.0)
DBA_TOP_NS = (1, 2, 3, 5)
DBA_ALPHA = 3.0
QE_WITH_DBA = (3, 3.0)
BATCH = 8
LIMITS = ImageLimits(max_bytes=50_000_000)


@dataclass
class Protocol:
    """queries: float32 [q, d]; database: float32 [g, d]; relevant / junk: bool [q, g];
    excluded: bool [q, g] (rows removed from a query's database: itself)."""

    name: str
    queries: np.ndarray
    database: np.ndarray
    relevant: np.ndarray
    junk: np.ndarray
    excluded: np.ndarray
    subsets: dict[str, np.ndarray]  # name -> bool [q], queries reported separately too
    ns_score: bool = False
    # The images behind the rows (for local features): (path, crop box or None) per query.
    query_images: list[tuple[Path, tuple[int, ...] | None]] = field(default_factory=list)
    database_images: list[Path] = field(default_factory=list)


def embed_files(
    model: GlobalModel, paths: list[Path], crops: list[tuple[int, ...] | None]
) -> np.ndarray:
    """float32 [n, d] embeddings of the images (optionally cropped to x1, y1, x2, y2)."""
    rows = []
    for start in range(0, len(paths), BATCH):
        batch = []
        for path, crop in zip(
            paths[start : start + BATCH], crops[start : start + BATCH], strict=True
        ):
            rgb = decode_rgb(path.read_bytes(), LIMITS)
            if crop is not None:
                x1, y1, x2, y2 = crop
                rgb = rgb[y1:y2, x1:x2]
            batch.append(model.preprocess(rgb))
        rows.append(model.run(np.stack(batch)))
    return np.concatenate(rows).astype(np.float32)


def cached(cache: Path, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    path = cache / f"{key}.npy"
    if path.exists():
        return np.load(path)
    array = compute()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return array


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def smvs(model: GlobalModel, cache: Path, version: str) -> list[Protocol]:
    root = DATASETS / "smvs_dvd_covers"
    rows = read_csv(root / "groundtruth.csv")
    paths = [root / "images" / r["filename"] for r in rows]
    vectors = cached(
        cache, f"smvs_{version}", lambda: embed_files(model, paths, [None] * len(paths))
    )
    groups = np.array([r["group"] for r in rows])
    is_query = np.array([r["role"] == "query" for r in rows])
    q, g = np.flatnonzero(is_query), np.flatnonzero(~is_query)
    standard = Protocol(
        "smvs_standard",
        vectors[q],
        vectors[g],
        groups[q][:, None] == groups[g][None, :],
        np.zeros((len(q), len(g)), bool),
        np.zeros((len(q), len(g)), bool),
        {},
        query_images=[(paths[i], None) for i in q],
        database_images=[paths[i] for i in g],
    )
    n = len(rows)
    everyone = Protocol(
        "smvs_all_vs_all",
        vectors,
        vectors,
        (groups[:, None] == groups[None, :]) & ~np.eye(n, dtype=bool),
        np.zeros((n, n), bool),
        np.eye(n, dtype=bool),
        {"phone_queries": is_query},
        query_images=[(path, None) for path in paths],
        database_images=paths,
    )
    return [standard, everyone]


def paris(model: GlobalModel, cache: Path, version: str) -> list[Protocol]:
    root = DATASETS / "paris6k_subset"
    rows = read_csv(root / "groundtruth.csv")
    paths = [root / "images" / r["filename"] for r in rows]
    vectors = cached(
        cache, f"paris_{version}", lambda: embed_files(model, paths, [None] * len(paths))
    )
    query_rows = [i for i, r in enumerate(rows) if r["role"] == "query"]
    boxes: list[tuple[int, ...] | None] = [
        tuple(int(round(float(v))) for v in rows[i]["query_bbox_x1y1x2y2"].split())
        for i in query_rows
    ]
    queries = cached(
        cache,
        f"paris_queries_{version}",
        lambda: embed_files(model, [paths[i] for i in query_rows], boxes),
    )
    groups = np.array([r["group"] for r in rows])
    status = np.array([r["gt_status"] for r in rows])
    same = groups[query_rows][:, None] == groups[None, :]
    excluded = np.zeros((len(query_rows), len(rows)), bool)
    excluded[np.arange(len(query_rows)), query_rows] = True
    return [
        Protocol(
            "paris6k_subset",
            queries,
            vectors,
            same & (status == "positive")[None, :],
            same & (status == "junk")[None, :],
            excluded,
            {},
            query_images=[(paths[i], box) for i, box in zip(query_rows, boxes, strict=True)],
            database_images=paths,
        )
    ]


def ukbench(model: GlobalModel, cache: Path, version: str) -> list[Protocol]:
    root = DATASETS / "ukbench1000"
    rows = read_csv(root / "groundtruth.csv")
    paths = [root / "images" / r["filename"] for r in rows]
    vectors = cached(
        cache, f"ukbench_{version}", lambda: embed_files(model, paths, [None] * len(paths))
    )
    groups = np.array([r["group"] for r in rows])
    n = len(rows)
    same = groups[:, None] == groups[None, :]
    no = np.zeros((n, n), bool)
    return [
        Protocol("ukbench1000_ns", vectors, vectors, same, no, no, {}, ns_score=True),
        Protocol(
            "ukbench1000",
            vectors,
            vectors,
            same & ~np.eye(n, dtype=bool),
            no,
            np.eye(n, dtype=bool),
            {},
            query_images=[(path, None) for path in paths],
            database_images=paths,
        ),
    ]


def ranked_sims(protocol: Protocol, top_n: int, alpha: float) -> np.ndarray:
    """float32 [q, g] similarities to each (expanded) query; excluded rows -inf."""
    sims = protocol.queries @ protocol.database.T
    sims[protocol.excluded] = -np.inf
    if top_n == 0:
        return sims
    top = np.argsort(-sims, axis=1, kind="stable")[:, :top_n]
    top_sims = np.take_along_axis(sims, top, axis=1)
    top_sims = np.where(np.isfinite(top_sims), top_sims, np.nan)
    expanded = expand(protocol.queries, protocol.database[top], top_sims, alpha)
    sims = expanded @ protocol.database.T
    sims[protocol.excluded] = -np.inf
    return sims


def augmented(protocol: Protocol, top_n: int, alpha: float) -> Protocol:
    """Database-side augmentation (alpha-DBA): each database vector becomes the alpha-QE of
    itself with its top_n nearest other database vectors; the queries stay as they are."""
    database = protocol.database
    sims = database @ database.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :top_n]
    top_sims = np.take_along_axis(sims, top, axis=1)
    new = expand(database, database[top], top_sims, alpha)
    return Protocol(
        protocol.name,
        protocol.queries,
        new,
        protocol.relevant,
        protocol.junk,
        protocol.excluded,
        protocol.subsets,
        protocol.ns_score,
    )


def scores(protocol: Protocol, sims: np.ndarray) -> dict[str, float]:
    """mAP / P@1 (junk and excluded rows dropped from each ranking), N-S where it applies."""
    aps, p1, ns = [], [], []
    for i in range(sims.shape[0]):
        order = np.argsort(-sims[i], kind="stable")
        keep = ~(protocol.junk[i, order] | protocol.excluded[i, order])
        order = order[keep]
        relevant = protocol.relevant[i, order]
        if protocol.ns_score:
            ns.append(float(relevant[:4].sum()))
        if not relevant.any():
            continue
        ranks = np.flatnonzero(relevant) + 1
        aps.append(float((np.arange(1, len(ranks) + 1) / ranks).mean()))
        p1.append(float(relevant[0]))
    out = {"map": round(float(np.mean(aps)), 4), "p_at_1": round(float(np.mean(p1)), 4)}
    if protocol.ns_score:
        out = {"ns_score": round(float(np.mean(ns)), 4)}
    for name, mask in protocol.subsets.items():
        sub = Protocol(
            protocol.name,
            protocol.queries[mask],
            protocol.database,
            protocol.relevant[mask],
            protocol.junk[mask],
            protocol.excluded[mask],
            {},
        )
        for key, value in scores(sub, sims[mask]).items():
            out[f"{name}_{key}"] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    manifest, model_path = load_local(args.model_dir)
    model = GlobalModel(
        manifest, create_session(model_path, ["CPUExecutionProvider"], args.threads)
    )
    started = time.perf_counter()
    protocols = [
        *smvs(model, args.cache, manifest.version),
        *paris(model, args.cache, manifest.version),
        *ukbench(model, args.cache, manifest.version),
    ]
    embed_s = time.perf_counter() - started
    results: dict[str, list[dict[str, object]]] = {}
    dba_results: dict[str, list[dict[str, object]]] = {}
    for protocol in protocols:
        rows: list[dict[str, object]] = [
            {"top_n": 0, "alpha": None, **scores(protocol, ranked_sims(protocol, 0, 0.0))}
        ]
        for top_n in TOP_NS:
            for alpha in ALPHAS:
                row = scores(protocol, ranked_sims(protocol, top_n, alpha))
                rows.append({"top_n": top_n, "alpha": alpha, **row})
        results[protocol.name] = rows
        dba_rows = []
        # Where a query is removed from the database, the database was augmented with it:
        # DBA would be optimistic there, so it is measured only where no query is removed.
        for dba_n in DBA_TOP_NS if not protocol.excluded.any() else ():
            augmented_protocol = augmented(protocol, dba_n, DBA_ALPHA)
            for top_n, alpha in ((0, 0.0), QE_WITH_DBA):
                row = scores(augmented_protocol, ranked_sims(augmented_protocol, top_n, alpha))
                dba_rows.append(
                    {"dba_top_n": dba_n, "dba_alpha": DBA_ALPHA, "qe_top_n": top_n, **row}
                )
        dba_results[protocol.name] = dba_rows
        best = max(rows[1:], key=lambda r: r.get("map", r.get("ns_score", 0.0)))  # type: ignore[arg-type,return-value]
        print(protocol.name, "none:", rows[0], "best:", best, flush=True)
    report = {
        "command": "nice -n 10 .venv/bin/python bench/query_expansion.py",
        "model_version": manifest.version,
        "grid": {"top_n": list(TOP_NS), "alpha": list(ALPHAS)},
        "embed_or_cache_seconds": round(embed_s, 1),
        "machine": platform.platform(),
        "results": results,
        "dba_note": "database-side augmentation, measured only (not built in the service); "
        f"queries with qe_top_n > 0 use alpha-QE ({QE_WITH_DBA[0]}, {QE_WITH_DBA[1]}) on top",
        "dba_results": dba_results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
