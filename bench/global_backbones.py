"""Global-only retrieval of the global models on the dev sets, plus CPU time per image.

    nice -n 10 .venv/bin/python bench/global_backbones.py [--models-dir models]
        [--datasets ../shared/datasets] [--extra-sizes efficientnet-lite2-gem=288,416]
        [--models mobilenetv2-gem mobilenetv2-gem-ms ...]
        [--threads 2] [--rounds 5] [--out bench/results/global_backbones.json]

Every model is the built ONNX artefact (``services.models.build``; the recipes' default sizes
come from ``--models-dir``, built there if missing; extra sizes are built in a temporary
folder) run in-process with ONNX Runtime on CPU, through the embedder's own decoding
(``services.common.imaging.decode_rgb``, PIL, EXIF applied) and preprocessing
(``services.embedder.core.GlobalModel.preprocess``: stretch to the manifest's input size,
INTER_AREA, the manifest's mean/std). Brute-force cosine similarity over the whole gallery.

Sets and protocols (see each set's README):

* ``smvs_dvd_covers`` standard: the 400 phone photos query the 100 clean covers; P@1 and mAP
  (one relevant image per query, so mAP = MRR).
* ``paris6k_subset``: the 11 official queries, cropped to their boxes, query the other 249
  images; relevant = same landmark and ``positive``; same-landmark ``junk`` is removed from the
  ranking; mAP (non-interpolated AP).
* ``ukbench1000``: every image queries all 1,000 (itself included): N-S score (of its group's
  4 images, how many are in its top 4; max 4); P@1 and mAP with the query itself excluded.
* ``ukbench1000`` transformed: each query rotated / scaled / cropped / JPEG-compressed by
  ``visearch.transforms`` (the ``visearch eval`` query set ``transformed``, default seed)
  against the untouched 1,000: N-S, P@1 and mAP (4 relevant per query).

Extra input sizes (``--extra-sizes``, to choose a recipe's default) embed only the first
``--subset`` UKBench images; every row also reports UKBench metrics on that subset (gallery =
the subset), so all rows can be compared there.

Each model gets a second row, ``centred``: the mean of the gallery embeddings (SMVS: the 100
covers; Paris: all 250 images; UKBench: the 1,000) is subtracted from queries and gallery and
the rows are L2-normalised again.

Timing: the same 16 SMVS phone photos, batch 16 and batch 1, min over ``--rounds``
round-robin rounds across the models (the machine is shared: the minimum is the least
disturbed run), plus decode-free preprocessing ms/image. Load averages are recorded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.imaging import ImageLimits, decode_rgb  # noqa: E402
from services.common.model_registry import ModelManifest  # noqa: E402
from services.embedder.core import GlobalModel  # noqa: E402
from services.models import build  # noqa: E402
from services.models.recipes import RECIPES, GlobalRecipe  # noqa: E402
from visearch import transforms  # noqa: E402

DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"
DEFAULT_OUT = ROOT / "bench" / "results" / "global_backbones.json"
BATCH = 16
LIMITS = ImageLimits(max_bytes=64 << 20)
TIMING_IMAGES = 16
NS_TOP = 4

Image = np.ndarray  # uint8 [H, W, 3] RGB
Loader = Callable[[], Image]


@dataclass(frozen=True)
class Sets:
    """Image loaders and labels of every dev set (decoded lazily, once per model)."""

    smvs_gallery: list[Loader]
    smvs_gallery_groups: np.ndarray  # [100] str
    smvs_queries: list[Loader]
    smvs_query_groups: np.ndarray  # [400] str
    paris_images: list[Loader]  # all 250
    paris_groups: np.ndarray  # [250] str
    paris_status: np.ndarray  # [250] str: positive / junk / negative
    paris_queries: list[Loader]  # 11 cropped queries
    paris_query_index: np.ndarray  # [11] int: row of each query in paris_images
    ukb_images: list[Loader]  # 1000
    ukb_groups: np.ndarray  # [1000] int
    ukb_transformed: list[Loader]  # 1000 transformed query copies


def _file_loader(path: Path) -> Loader:
    """Loader decoding ``path`` like the embedder does."""
    return lambda: decode_rgb(path.read_bytes(), LIMITS)


def _bytes_loader(data: bytes) -> Loader:
    """Loader decoding in-memory encoded bytes like the embedder does."""
    return lambda: decode_rgb(data, LIMITS)


def _crop_loader(path: Path, box: tuple[float, float, float, float]) -> Loader:
    """Loader of ``path`` cropped to ``box`` (x1, y1, x2, y2 in pixels, rounded outwards)."""

    def load() -> Image:
        image = decode_rgb(path.read_bytes(), LIMITS)
        x1, y1, x2, y2 = box
        h, w = image.shape[:2]
        top, left = max(0, int(np.floor(y1))), max(0, int(np.floor(x1)))
        bottom, right = min(h, int(np.ceil(y2))), min(w, int(np.ceil(x2)))
        return np.ascontiguousarray(image[top:bottom, left:right])

    return load


def _rows(path: Path) -> list[dict[str, str]]:
    """CSV rows as dicts."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def load_sets(datasets: Path, limit: int = 0) -> Sets:
    """Read the ground truth of the dev sets; ``limit`` > 0 keeps the first UKBench images."""
    smvs = datasets / "smvs_dvd_covers"
    rows = _rows(smvs / "groundtruth.csv")
    gal = [r for r in rows if r["role"] == "gallery"]
    qry = [r for r in rows if r["role"] == "query"]
    paris = datasets / "paris6k_subset"
    prow = _rows(paris / "groundtruth.csv")
    pq = [(i, r) for i, r in enumerate(prow) if r["role"] == "query"]
    ukb = datasets / "ukbench1000"
    urow = _rows(ukb / "groundtruth.csv")
    if limit:
        urow = urow[:limit]
    ukb_paths = [ukb / "images" / r["filename"] for r in urow]
    transformed = [
        _bytes_loader(transforms.transform_image_bytes(p.read_bytes(), p.stem)[0])
        for p in ukb_paths
    ]  # image id = file stem, as visearch.datasets.ukbench names it
    return Sets(
        smvs_gallery=[_file_loader(smvs / "images" / r["filename"]) for r in gal],
        smvs_gallery_groups=np.array([r["group"] for r in gal]),
        smvs_queries=[_file_loader(smvs / "images" / r["filename"]) for r in qry],
        smvs_query_groups=np.array([r["group"] for r in qry]),
        paris_images=[_file_loader(paris / "images" / r["filename"]) for r in prow],
        paris_groups=np.array([r["group"] for r in prow]),
        paris_status=np.array([r["gt_status"] for r in prow]),
        paris_queries=[
            _crop_loader(
                paris / "images" / r["filename"],
                tuple(float(v) for v in r["query_bbox_x1y1x2y2"].split()),  # type: ignore[arg-type]
            )
            for _, r in pq
        ],
        paris_query_index=np.array([i for i, _ in pq]),
        ukb_images=[_file_loader(p) for p in ukb_paths],
        ukb_groups=np.array([int(r["group"]) for r in urow]),
        ukb_transformed=transformed,
    )


def average_precision(relevant: np.ndarray) -> float:
    """Non-interpolated AP of a ranked list: ``relevant`` [n] bool in rank order."""
    hits = np.flatnonzero(relevant)
    if hits.size == 0:
        return 0.0
    return float(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))


def centre(queries: np.ndarray, gallery: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, ...]:
    """Subtract ``mean`` [D] from [n,D] and [m,D] float32 rows and L2-normalise again."""

    def norm(x: np.ndarray) -> np.ndarray:
        y = x - mean
        return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)

    return norm(queries), norm(gallery)


def eval_smvs(q: np.ndarray, g: np.ndarray, qg: np.ndarray, gg: np.ndarray) -> dict[str, float]:
    """P@1 and mAP (= MRR, one relevant) of [400,D] queries against [100,D] covers."""
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    rel = gg[order] == qg[:, None]
    rank = rel.argmax(axis=1) + 1
    return {"p_at_1": float((rank == 1).mean()), "map": float((1.0 / rank).mean())}


def eval_paris(
    q: np.ndarray, db: np.ndarray, groups: np.ndarray, status: np.ndarray, qi: np.ndarray
) -> dict[str, float]:
    """mAP of the cropped queries [11,D] against the 250 images [250,D] minus the query
    itself; same-landmark junk removed from the ranking."""
    aps = []
    for k, i in enumerate(qi):
        order = np.argsort(-(db @ q[k]), kind="stable")
        order = order[order != i]
        same = groups[order] == groups[i]
        keep = ~(same & (status[order] == "junk"))
        aps.append(average_precision((same & (status[order] == "positive"))[keep]))
    return {"map": float(np.mean(aps)), "queries": len(aps)}


def eval_ukbench(
    q: np.ndarray, g: np.ndarray, groups: np.ndarray, self_in_gallery: bool
) -> dict[str, float]:
    """N-S (top 4 of the whole gallery; max 4), P@1 and mAP. With ``self_in_gallery`` the
    queries are the gallery rows: N-S counts the query itself, P@1 / mAP exclude it."""
    n = len(groups)
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    same = groups[order] == groups[:, None]
    ns = float(same[:, :NS_TOP].sum(axis=1).mean())
    if self_in_gallery:
        not_self = order != np.arange(n)[:, None]
        same = groups[order[not_self].reshape(n, n - 1)] == groups[:, None]
    aps = [average_precision(row) for row in same]
    return {"ns_score": ns, "p_at_1": float(same[:, 0].mean()), "map": float(np.mean(aps))}


def embed(model: GlobalModel, loaders: Sequence[Loader]) -> np.ndarray:
    """[n, D] float32 unit rows, batches of :data:`BATCH`."""
    out = []
    for i in range(0, len(loaders), BATCH):
        x = np.stack([model.preprocess(load()) for load in loaders[i : i + BATCH]])
        out.append(model.run(x))
    return np.concatenate(out)


def _ukbench_metrics(
    ukb: np.ndarray, ukb_t: np.ndarray, groups: np.ndarray, centred: bool
) -> dict[str, dict[str, float]]:
    """Plain and transformed UKBench metrics of [n,D] originals and [n,D] transformed copies
    (gallery: the n originals; centred: minus their mean, renormalised)."""
    if centred:
        mean = ukb.mean(axis=0)
        ukb_t, _ = centre(ukb_t, ukb, mean)
        ukb, _ = centre(ukb, ukb, mean)
    return {
        "plain": eval_ukbench(ukb, ukb, groups, self_in_gallery=True),
        "transformed": eval_ukbench(ukb_t, ukb, groups, self_in_gallery=False),
    }


def evaluate(
    model: GlobalModel, sets: Sets, ukb_limit: int, sub: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain, centred) metrics of one model on every set.

    UKBench: the first ``ukb_limit`` images (0: all) are embedded; metrics on all of them
    (only when all were embedded) and on the first ``sub`` (gallery = those ``sub``), the
    subset every configuration shares.
    """
    n = ukb_limit or len(sets.ukb_images)
    smvs_g, smvs_q = embed(model, sets.smvs_gallery), embed(model, sets.smvs_queries)
    paris_db, paris_q = embed(model, sets.paris_images), embed(model, sets.paris_queries)
    ukb, ukb_t = embed(model, sets.ukb_images[:n]), embed(model, sets.ukb_transformed[:n])
    rows = []
    for centred in (False, True):
        sq, sg, pq, pdb = smvs_q, smvs_g, paris_q, paris_db
        if centred:
            sq, sg = centre(smvs_q, smvs_g, smvs_g.mean(axis=0))
            pq, pdb = centre(paris_q, paris_db, paris_db.mean(axis=0))
        row: dict[str, Any] = {
            "smvs_standard": eval_smvs(sq, sg, sets.smvs_query_groups, sets.smvs_gallery_groups),
            "paris6k_subset": eval_paris(
                pq, pdb, sets.paris_groups, sets.paris_status, sets.paris_query_index
            ),
        }
        if n == len(sets.ukb_images):
            full = _ukbench_metrics(ukb, ukb_t, sets.ukb_groups, centred)
            row["ukbench_plain"], row["ukbench_transformed"] = full["plain"], full["transformed"]
        part = _ukbench_metrics(ukb[:sub], ukb_t[:sub], sets.ukb_groups[:sub], centred)
        row[f"ukbench_plain_first{sub}"] = part["plain"]
        row[f"ukbench_transformed_first{sub}"] = part["transformed"]
        rows.append(row)
    return rows[0], rows[1]


def open_model(model_dir: Path, threads: int) -> GlobalModel:
    """The embedder's GlobalModel on a built folder, CPU ONNX Runtime, ``threads`` intra-op."""
    manifest = ModelManifest.from_json((model_dir / build.MANIFEST_FILENAME).read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(model_dir / build.MODEL_FILENAME), options, providers=["CPUExecutionProvider"]
    )
    return GlobalModel(manifest, session)


def time_models(models: dict[str, GlobalModel], images: list[Image], rounds: int) -> dict:
    """Per model: min over round-robin rounds of batch-16 ms/image, batch-1 ms, and
    preprocessing ms/image (from decoded images)."""
    inputs, pre = {}, {}
    for key, model in models.items():
        t0 = time.perf_counter()
        inputs[key] = np.stack([model.preprocess(im) for im in images])
        pre[key] = 1000 * (time.perf_counter() - t0) / len(images)
        model.run(inputs[key])  # warm-up
    b16: dict[str, list[float]] = {k: [] for k in models}
    b1: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for key, model in models.items():
            t0 = time.perf_counter()
            model.run(inputs[key])
            t1 = time.perf_counter()
            for j in range(4):
                model.run(inputs[key][j : j + 1])
            t2 = time.perf_counter()
            b16[key].append(1000 * (t1 - t0) / len(images))
            b1[key].append(1000 * (t2 - t1) / 4)
    return {
        k: {
            "infer_ms_per_image_b16": round(min(b16[k]), 2),
            "latency_ms_b1": round(min(b1[k]), 2),
            "preprocess_ms_per_image": round(pre[k], 2),
        }
        for k in models
    }


def _parse_extra(values: list[str]) -> list[tuple[GlobalRecipe, tuple[int, int]]]:
    """``name=288,416`` → [(recipe, (288, 288)), (recipe, (416, 416))]."""
    out = []
    for value in values:
        name, _, sizes = value.partition("=")
        for size in filter(None, sizes.split(",")):
            out.append((RECIPES[name], (int(size), int(size))))
    return out


def _round(obj: Any) -> Any:
    """Floats rounded to 4 decimals, recursively."""
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


def main() -> None:
    """Evaluate every configuration and write the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    ap.add_argument("--extra-sizes", nargs="*", default=["efficientnet-lite2-gem=288,416"])
    ap.add_argument(
        "--models",
        nargs="*",
        choices=sorted(RECIPES),
        default=sorted(RECIPES),
        help="recipes evaluated at their default size (default: all)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ukbench-limit", type=int, default=0, help="first N UKBench images (0: all)")
    ap.add_argument(
        "--subset", type=int, default=200, help="UKBench images every configuration is scored on"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    load_start = list(os.getloadavg())
    started = time.perf_counter()
    sets = load_sets(args.datasets, args.ukbench_limit)
    results, models = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        # Default sizes: all UKBench images; extra sizes: only the shared subset (CPU time).
        # Extra sizes first: they are the cheaper, and their rows print early.
        extra = _parse_extra(args.extra_sizes)
        configs = [(r, size, Path(tmp), args.subset) for r, size in extra]
        configs += [
            (RECIPES[name], RECIPES[name].input_size, args.models_dir, args.ukbench_limit)
            for name in args.models
        ]
        sub = min(args.subset, len(sets.ukb_images))
        for recipe, size, out, limit in configs:
            model_dir, manifest, _ = build.build(out, size, recipe=recipe)
            model = open_model(model_dir, args.threads)
            key = manifest["version"]
            models[key] = model
            t0 = time.perf_counter()
            plain, centred = evaluate(model, sets, limit, sub)
            common = {
                "model": recipe.name,
                "version": key,
                "input_size": list(size),
                "default_size": size == recipe.input_size,
                "mean": manifest["mean"],
                "std": manifest["std"],
                "eval_s": round(time.perf_counter() - t0, 1),
            }
            for variant, metrics in (("plain", plain), ("centred", centred)):
                row = _round({**common, "variant": variant, **metrics})
                results.append(row)
                print(json.dumps(row), flush=True)
        timing_images = [load() for load in sets.smvs_queries[:TIMING_IMAGES]]
        timings = time_models(models, timing_images, args.rounds)
    for row in results:
        row["timing"] = timings[row["version"]]
    report = {
        "command": "nice -n 10 .venv/bin/python bench/global_backbones.py "
        + " ".join(sys.argv[1:]),
        "datasets": str(args.datasets),
        "ukbench_images": len(sets.ukb_images),
        "ort_version": ort.__version__,
        "ort_threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "timing": f"{TIMING_IMAGES} SMVS phone photos; min over {args.rounds} round-robin rounds",
        "load_average_at_start": load_start,
        "load_average_at_end": list(os.getloadavg()),
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    for row in results:
        s, p = row["smvs_standard"], row["paris6k_subset"]
        u, t = row[f"ukbench_plain_first{sub}"], row[f"ukbench_transformed_first{sub}"]
        print(
            f"{row['version']:>34} {row['variant']:>7}  SMVS P@1 {s['p_at_1']:.3f} mAP "
            f"{s['map']:.3f}  Paris mAP {p['map']:.3f}  UKB{sub} N-S {u['ns_score']:.3f}  "
            f"UKB{sub}-T N-S {t['ns_score']:.3f} mAP {t['map']:.3f}  "
            f"b16 {row['timing']['infer_ms_per_image_b16']:.1f} ms/img"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
