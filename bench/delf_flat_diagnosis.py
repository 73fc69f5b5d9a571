"""Why DELF-style features lose to RootSIFT on flat objects: inliers of true and wrong pairs
on SMVS DVD covers under extraction / geometry variants.

A small, fixed sample (``--dvds`` covers x 4 phone photos, upright queries): each phone photo
is verified against its own cover and against ``--wrong`` other covers (the next ones in id
order). Reported per variant: median inliers of true pairs, share of true pairs with at least
the DELF minimum (8) and 15 inliers, the largest wrong-pair count, the pairs' P@1 when the
query must pick its cover among the 1 + wrong covers by inliers alone, and the mean number of
keypoints kept and the share of them at each pyramid side. RootSIFT is the reference.

Usage: python bench/delf_flat_diagnosis.py [--dvds 12] [--wrong 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.model_registry import load_local  # noqa: E402
from services.embedder.core import create_session, delf_from_session  # noqa: E402
from services.embedder.rootsift import extract_rootsift  # noqa: E402
from services.verifier.geometry import GeometrySettings  # noqa: E402
from services.verifier.rotation import DELF_GEOMETRY, verify_grouped  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMVS = ROOT.parent / "shared" / "datasets" / "smvs_dvd_covers"
CAMERAS = ("canon", "droid", "e63", "palm")
# (name, base side, max side, max features, residual px)
VARIANTS = (
    ("delf 384 / 500 / 20px (v2 defaults)", 384, 384, 500, 20.0),
    ("delf 384 / 500 / 40px", 384, 384, 500, 40.0),
    ("delf 384 / 1000 / 20px", 384, 384, 1000, 20.0),
    ("delf 512 / 1000 / 20px", 512, 512, 1000, 20.0),
    ("delf 640 / 1000 / 20px", 640, 640, 1000, 20.0),
    ("delf 640 / 1000 / 12px", 640, 640, 1000, 12.0),
)


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def summarise(true_inliers: list[int], wrong: list[list[int]]) -> dict:
    t = np.array(true_inliers)
    w = np.array(wrong)
    return {
        "true_median": float(np.median(t)),
        "true_share_ge_8": round(float(np.mean(t >= 8)), 3),
        "true_share_ge_15": round(float(np.mean(t >= 15)), 3),
        "wrong_max": int(w.max()),
        "wrong_p95": float(np.percentile(w, 95)),
        "p_at_1_by_inliers": round(float(np.mean(t > w.max(axis=1))), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dvds", type=int, default=12)
    parser.add_argument("--wrong", type=int, default=5)
    parser.add_argument("--model", type=Path, default=sorted((ROOT / "models/local").glob("*"))[-1])
    parser.add_argument("--variants", type=int, nargs="+", default=list(range(len(VARIANTS))))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with (SMVS / "groundtruth.csv").open(newline="") as handle:
        groups = sorted({r["group"] for r in csv.DictReader(handle)})
    dvds = groups[: args.dvds + args.wrong]
    covers = {g: rgb(SMVS / "images" / f"{g}_reference.jpg") for g in dvds}
    queries = [
        (g, rgb(SMVS / "images" / f"{g}_{c}.jpg")) for g in dvds[: args.dvds] for c in CAMERAS
    ]
    manifest, path = load_local(args.model)
    base = delf_from_session(manifest, create_session(path, ["CPUExecutionProvider"], 2))
    results: dict = {"model": args.model.name, "pairs": len(queries), "variants": {}}
    with threadpool_limits(limits=1, user_api="blas"):
        rs_covers = {g: extract_rootsift(im) for g, im in covers.items()}
        true, wrong = [], []
        for g, image in queries:
            q = extract_rootsift(image)
            others = [d for d in dvds if d != g][: args.wrong]
            true.append(verify_grouped(q, rs_covers[g], GeometrySettings())[0].inliers)
            wrong.append([verify_grouped(q, rs_covers[o], GeometrySettings())[0].inliers
                          for o in others])  # fmt: skip
        results["variants"]["rootsift 640 / 1000 / 6px"] = summarise(true, wrong)
        print("rootsift", results["variants"]["rootsift 640 / 1000 / 6px"], flush=True)
        for name, base_side, max_side, features, residual in [VARIANTS[i] for i in args.variants]:
            t0 = time.perf_counter()
            base.settings = replace(base.settings, base_side=base_side, max_side=max_side)
            geometry = replace(DELF_GEOMETRY, residual_px=residual)
            gallery = {g: base.extract(im, features) for g, im in covers.items()}
            true, wrong, kept, sides = [], [], [], []
            for g, image in queries:
                q = base.extract(image, features)
                kept.append(q.count)
                others = [d for d in dvds if d != g][: args.wrong]
                true.append(verify_grouped(q, gallery[g], geometry)[0].inliers)
                wrong.append([verify_grouped(q, gallery[o], geometry)[0].inliers
                              for o in others])  # fmt: skip
                sides.append(len(base.pyramid_sides(image.shape[1], image.shape[0])))
            row = summarise(true, wrong) | {
                "query_keypoints_mean": float(np.mean(kept)),
                "query_pyramid_levels": float(np.mean(sides)),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            results["variants"][name] = row
            print(name, row, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
