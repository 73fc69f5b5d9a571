"""Writes docs/quality.md from `visearch eval` reports (bench/results/quality/*.json).

One table per dev set and query set, one row per (model, re-rank mode): mAP, P@1, recall@10,
N-S where it applies, p50 / p95 search latency. No hand-typed numbers: a set without a
report is listed with the command that measures it.

.venv/bin/python bench/render_quality.py [--results bench/results/quality] [--out docs/quality.md]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "quality"
OUT = ROOT / "docs" / "quality.md"
EVAL = ".venv/bin/visearch eval ../shared/datasets/"


@dataclass(frozen=True)
class DevSet:
    """A dev set's protocol: its dataset folder, `--protocol`, query set and what it means."""

    dataset: str
    protocol: str
    queries: str
    title: str
    about: str

    def command(self) -> str:
        transformed = " --queries transformed" if self.queries == "transformed" else ""
        extra = " --per-label 60" if self.protocol == "labels" else ""
        return (
            f"{EVAL}{self.dataset} --protocol {self.protocol}{transformed}{extra} "
            f"--rerank none,geometric --out bench/results/quality/<name>.json"
        )


DEV_SETS = (
    DevSet(
        "smvs_dvd_covers", "smvs", "plain", "smvs_dvd_covers, standard",
        "400 phone photos (4 cameras: perspective, glare, blur, clutter) against the 100 clean "
        "covers; one relevant image per query, so mAP equals the mean reciprocal rank.",
    ),
    DevSet(
        "smvs_dvd_covers", "smvs-all", "plain", "smvs_dvd_covers, all-vs-all",
        "All 500 images query all 500 (each query's own image dropped); 4 relevant per query, "
        "phone-to-phone matches across cameras are the hard part.",
    ),
    DevSet(
        "paris6k_subset", "paris", "plain", "paris6k_subset, official queries",
        "The 11 official Paris6k queries present, each cropped to its box, against all 250 "
        "images (its own image dropped); same-landmark junk counts neither as hit nor miss.",
    ),
    DevSet(
        "paris6k_subset", "paris-all", "plain", "paris6k_subset, all-vs-all",
        "Every positive image (195) queries all 250 (its own image dropped), same-landmark "
        "junk ignored.",
    ),
    DevSet(
        "ukbench1000", "ukbench", "plain", "ukbench1000, plain",
        "Every image queries all 1,000; N-S counts the object's 4 photos (itself included) in "
        "the top 4; mAP and P@1 drop the query's own image.",
    ),
    DevSet(
        "ukbench1000", "ukbench", "transformed", "ukbench1000, transformed",
        "Each image rotated 0-360 deg, scaled 0.5-1.5x, cropped to 60-90 %, JPEG quality 30-70 "
        "(`visearch/transforms.py`, seeded per image) against the untouched 1,000; the "
        "original is one of the 4 relevant.",
    ),
    DevSet(
        "flowers5", "labels", "plain", "flowers5 (category level)",
        "Every image queries all of them, relevant = same flower class: a category check, not "
        "instance search (N-S does not apply).",
    ),
)  # fmt: skip


def load_reports(folder: Path) -> list[tuple[str, dict]]:
    """(file name, report) of every JSON report in `folder`, by name."""
    return [(p.name, json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


def _rows_for(dev_set: DevSet, reports: list[tuple[str, dict]]) -> list[tuple[str, dict, dict]]:
    rows = []
    for name, report in reports:
        if Path(report.get("dataset", "")).name != dev_set.dataset:
            continue
        if report.get("protocol") != dev_set.protocol:
            continue
        for run in report["runs"]:
            if run["queries"] == dev_set.queries:
                rows.append((name, report, run))
    return rows


def _model(report: dict, run: dict) -> str:
    training = report.get("training")
    trained = training is not None and training.get("published")
    return f"`{run.get('model') or '?'}`" + (" (trained on the gallery)" if trained else "")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def set_section(dev_set: DevSet, reports: list[tuple[str, dict]]) -> list[str]:
    """One dev set's table, or the command that would measure it."""
    lines = [f"## {dev_set.title}", "", dev_set.about, ""]
    rows = _rows_for(dev_set, reports)
    if not rows:
        return lines + ["Not measured yet:", "", f"    {dev_set.command()}", ""]
    ns = any(run.get("ns_applies") for _, _, run in rows)
    header = ["model", "mode", "mAP", "P@1", "R@10"] + (["N-S"] if ns else [])
    header += ["p50 ms", "p95 ms", "queries", "report"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, report, run in rows:
        cells = [
            _model(report, run),
            run["mode"],
            _fmt(run["map"]),
            _fmt(run["p_at_1"]),
            _fmt(run.get("recall_at", {}).get("10")),
        ]
        if ns:
            cells.append(_fmt(run["ns_score"]) if run.get("ns_applies") else "-")
        cells += [
            f"{run['latency_ms']['p50']:.0f}",
            f"{run['latency_ms']['p95']:.0f}",
            str(run.get("query_count", "?")),
            f"`{name}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""]
    for name, report in {name: report for name, report, _ in rows}.items():
        lines.append(
            f"`{name}`: gallery {report['images']} images, k = {report['k']}, "
            f"{report['client_workers']} concurrent clients, {report['machine']['cpus']} CPU "
            f"cores, load average before/after {report['load_average_before']} / "
            f"{report['load_average_after']}"
            + (f"; note: {report['note']}" if report.get("note") else "")
            + "."
        )
    return lines + [""]


def render(reports: list[tuple[str, dict]]) -> str:
    lines = [
        "# Search quality on the dev sets",
        "",
        "Written by `bench/render_quality.py` from the `visearch eval` reports in "
        "`bench/results/quality/`; do not edit by hand. Every number is measured through the "
        "whole local stack (`visearch up`, 2 shards): the gallery is ingested into fresh "
        "collections with the default settings, the queries searched through the gateway.",
        "",
        "Metrics (`visearch/eval_protocol.py`): mAP over the top k results (a relevant image "
        "not returned counts as missed), P@1, R@10 (the share of a query's relevant images in "
        "its top 10), the UKBench N-S score where it applies "
        "(every query has exactly 4 relevant images counting its own), and the client-side "
        "latency of one search while that many clients search at once. A query's own image "
        "is dropped from its ranking; junk counts neither as hit nor miss. Modes: `none` is "
        "the global-descriptor order, `geometric` re-ranks the top candidates with RootSIFT "
        "and a homography. Latency depends on the machine and its load (other work ran on "
        "the same cores), quality does not.",
        "",
    ]
    for dev_set in DEV_SETS:
        lines += set_section(dev_set, reports)
    known = {(s.dataset, s.protocol) for s in DEV_SETS}
    others = [
        (n, r)
        for n, r in reports
        if (Path(r.get("dataset", "")).name, r.get("protocol")) not in known
    ]
    if others:
        lines += ["## Other reports", ""]
        lines += [f"- `{n}`: {r.get('dataset')} ({r.get('protocol')})" for n, r in others]
        lines += [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.write_text(render(load_reports(args.results)), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
