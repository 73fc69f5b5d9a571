"""Grid search of the DELF verification and fusion settings on the dev queries.

Reads the cache of ``bench/local_features_eval.py extract`` (run it first). For every
(ratio, residual) pair, each dev query (plain and transformed) is verified against its global
top-50 once; every (min inliers, inlier scale, weight) fusion is then scored from those inlier
counts. Ranked by the mean N-S of the plain and transformed dev queries (ties: transformed mAP,
then the smaller weight). Writes bench/results/delf_settings_grid_dev.json; the chosen values
are ``services.verifier.rotation.DELF_*``.

Usage: python bench/delf_settings_grid.py [--split dev]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_features_eval import (  # noqa: E402
    CACHE,
    DATASET,
    DEPTH,
    ROTATIONS,
    load_features,
    select_rotations,
)

from services.verifier.fusion import FusionSettings, geometric_bonus  # noqa: E402
from services.verifier.rotation import DELF_GEOMETRY, verify_grouped  # noqa: E402
from visearch import datasets  # noqa: E402
from visearch.evaluation import score_rankings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (0.9, 0.95)
RESIDUALS_PX = (16.0, 20.0)
MIN_INLIERS = (6, 8, 10, 12, 14, 16)
INLIER_SCALES = (5.0, 10.0, 20.0)
WEIGHTS = (0.3, 0.5, 1.0)


def inlier_counts(split: str, variant: str, gallery: dict, gallery_ids: list, gvec: np.ndarray):
    """(query ids, similarities [q, g], top-50 [q, 50], {(ratio, residual): inliers [q, 50]})."""
    name = f"{split}_{variant}"
    qids = json.loads((CACHE / f"{name}.json").read_text())["ids"]
    sims = np.load(CACHE / f"{name}.global.npy") @ gvec.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :DEPTH]
    queries = load_features(CACHE / f"{name}.delf.npz", "delf")
    queries = {q: select_rotations(f, ROTATIONS) for q, f in queries.items()}
    counts = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for ratio, residual in itertools.product(RATIOS, RESIDUALS_PX):
            # min_inliers 4: every fit is made, the fusion grid applies its own threshold.
            geometry = replace(DELF_GEOMETRY, ratio=ratio, residual_px=residual, min_inliers=4)
            counts[(ratio, residual)] = np.array(
                [
                    [
                        verify_grouped(queries[q], gallery[gallery_ids[j]], geometry)[0].inliers
                        for j in top[i]
                    ]  # fmt: skip
                    for i, q in enumerate(qids)
                ]
            )
    return qids, sims, top, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", default="dev")
    args = parser.parse_args()
    labels = {e.id: e.label for e in datasets.ukbench(DATASET)}
    gallery_ids = json.loads((CACHE / "gallery.json").read_text())["ids"]
    gvec = np.load(CACHE / "gallery.global.npy")
    gallery = load_features(CACHE / "gallery.delf.npz", "delf")
    data = {
        v: inlier_counts(args.split, v, gallery, gallery_ids, gvec)
        for v in ("plain", "transformed")
    }
    rows = []
    for (ratio, residual), min_inliers, scale, weight in itertools.product(
        itertools.product(RATIOS, RESIDUALS_PX), MIN_INLIERS, INLIER_SCALES, WEIGHTS
    ):
        fusion = FusionSettings(weight=weight, inlier_scale=scale, min_inliers=min_inliers)
        scores = {}
        for variant, (qids, sims, top, counts) in data.items():
            inliers = counts[(ratio, residual)]
            ranking = {}
            for i, q in enumerate(qids):
                fused = [
                    (-(sims[i, j] + geometric_bonus(int(inliers[i, k]), fusion)), k, gallery_ids[j])
                    for k, j in enumerate(top[i])
                ]
                ranking[q] = [c for _, _, c in sorted(fused)]
            s = score_rankings(ranking, labels, query_in_gallery=variant == "plain")
            scores[variant] = {"ns": round(s.ns_score, 4), "map": round(s.map, 4)}
        mean_ns = (scores["plain"]["ns"] + scores["transformed"]["ns"]) / 2
        rows.append(
            {
                "mean_ns": round(mean_ns, 4),
                "ratio": ratio,
                "residual_px": residual,
                "min_inliers": min_inliers,
                "inlier_scale": scale,
                "weight": weight,
                **scores,
            }
        )
    rows.sort(key=lambda r: (-r["mean_ns"], -r["transformed"]["map"], r["weight"]))
    for row in rows[:5]:
        print(json.dumps(row))
    out = ROOT / "bench" / "results" / f"delf_settings_grid_{args.split}.json"
    out.write_text(json.dumps({"split": args.split, "depth": DEPTH, "ranked": rows}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
