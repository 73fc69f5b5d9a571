"""Converters from the dev-set folders to the generic protocol CSVs (`visearch.eval_protocol`).

Each dataset folder has ``images/`` and ``groundtruth.csv``; its README states its protocol:

- ``ukbench`` (filename,group): every image queries all of them; N-S applies (4 per group).
- ``labels`` (filename,label, e.g. flowers5): every image queries all of them.
- ``smvs`` (smvs_dvd_covers, role=gallery/query): the standard SMVS protocol, 400 phone
  photos against the 100 clean covers, one relevant each.
- ``smvs-all``: all 500 images query all 500 (each its own image dropped), 4 relevant each.
- ``paris`` (paris6k_subset, gt_status and query boxes): the official queries present, each
  cropped to its box, against all images (its own image dropped), same-landmark junk ignored.
- ``paris-all``: every positive image queries all of them, same-landmark junk ignored.

Query sets: ``plain`` (the protocol's queries) and ``transformed`` (each plain query, cropped
to its box first, rotated, scaled, cropped and JPEG-compressed by ``visearch.transforms``,
seeded by the query id; written as files, query id + ``TRANSFORMED_SUFFIX``, so the query's
untouched original in the gallery counts as relevant).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from visearch import datasets, transforms
from visearch.datasets import ImageEntry
from visearch.eval_protocol import Query, write_gallery, write_queries

PROTOCOLS = ("auto", "ukbench", "labels", "smvs", "smvs-all", "paris", "paris-all")
QUERY_SETS = ("plain", "transformed")
TRANSFORMED_SUFFIX = "@transformed"
GALLERY_CSV = "gallery.csv"
GROUND_TRUTH = "groundtruth.csv"
PARIS_POSITIVE, PARIS_JUNK = "positive", "junk"
SMVS_GALLERY_ROLE, QUERY_ROLE = "gallery", "query"


@dataclass(frozen=True)
class ProtocolFiles:
    """Where a converter wrote a protocol: one gallery CSV, one CSV per query set."""

    protocol: str
    gallery: Path
    queries: dict[str, Path]


def _rows(dataset_dir: Path) -> list[dict[str, str]]:
    path = dataset_dir / GROUND_TRUTH
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a dataset folder")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def detect_protocol(dataset_dir: Path) -> str:
    """The protocol a folder's groundtruth.csv columns imply (see the module docstring)."""
    rows = _rows(dataset_dir)
    columns = set(rows[0]) if rows else set()
    if {"gt_status", "query_bbox_x1y1x2y2"} <= columns:
        return "paris"
    if {"role", "group", "camera"} <= columns:
        return "smvs"
    if "group" in columns:
        return "ukbench"
    if "label" in columns:
        return "labels"
    raise ValueError(f"{dataset_dir}: cannot tell the protocol from columns {sorted(columns)}")


def _entry(dataset_dir: Path, row: dict[str, str]) -> ImageEntry:
    return ImageEntry(
        Path(row["filename"]).stem, dataset_dir / "images" / row["filename"], row["group"]
    )


def _as_queries(entries: list[ImageEntry]) -> list[Query]:
    return [Query(e.id, e.path, e.label) for e in entries]


def smvs(dataset_dir: Path, all_vs_all: bool = False) -> tuple[list[ImageEntry], list[Query]]:
    """SMVS DVD covers: standard (phone photos vs covers) or all-vs-all."""
    rows = _rows(dataset_dir)
    if all_vs_all:
        entries = [_entry(dataset_dir, r) for r in rows]
        return entries, _as_queries(entries)
    gallery = [_entry(dataset_dir, r) for r in rows if r["role"] == SMVS_GALLERY_ROLE]
    queries = _as_queries([_entry(dataset_dir, r) for r in rows if r["role"] == QUERY_ROLE])
    return gallery, queries


def _bbox(value: str) -> tuple[float, float, float, float] | None:
    parts = [float(p) for p in value.split()]
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def paris(dataset_dir: Path, all_vs_all: bool = False) -> tuple[list[ImageEntry], list[Query]]:
    """Paris6k subset: the official (cropped) queries or every positive; junk per landmark."""
    rows = _rows(dataset_dir)
    gallery = [_entry(dataset_dir, r) for r in rows]
    junk: dict[str, set[str]] = {}
    for row, entry in zip(rows, gallery, strict=True):
        if row["gt_status"] == PARIS_JUNK:
            junk.setdefault(row["group"], set()).add(entry.id)
    queries = []
    for row, entry in zip(rows, gallery, strict=True):
        if all_vs_all:
            if row["gt_status"] != PARIS_POSITIVE:
                continue
            bbox = None
        else:
            if row["role"] != QUERY_ROLE:
                continue
            bbox = _bbox(row["query_bbox_x1y1x2y2"])
        group_junk = frozenset(junk.get(row["group"], set()))
        queries.append(Query(entry.id, entry.path, entry.label, group_junk, bbox))
    return gallery, queries


def plain_protocol(
    dataset_dir: Path, protocol: str, limit: int = 0, per_label: int = 0
) -> tuple[list[ImageEntry], list[Query]]:
    """(gallery, plain queries) of a dataset folder.

    limit: ukbench / labels keep the first N images (gallery and queries); smvs / paris keep
    the whole gallery and the first N queries. per_label: labels only, first N per label.
    """
    if protocol == "auto":
        protocol = detect_protocol(dataset_dir)
    if protocol in ("ukbench", "labels"):
        if protocol == "ukbench":
            entries = datasets.ukbench(dataset_dir, limit)
        else:
            entries = datasets.labelled(dataset_dir, per_label)
            entries = entries[:limit] if limit else entries
        return entries, _as_queries(entries)
    if protocol in ("smvs", "smvs-all"):
        gallery, queries = smvs(dataset_dir, all_vs_all=protocol == "smvs-all")
    elif protocol in ("paris", "paris-all"):
        gallery, queries = paris(dataset_dir, all_vs_all=protocol == "paris-all")
    else:
        raise ValueError(f"unknown protocol {protocol!r}; use {', '.join(PROTOCOLS)}")
    return gallery, queries[:limit] if limit else queries


def _file_stem(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id)


def transformed_queries(
    queries: list[Query], out_dir: Path, seed: int = transforms.DEFAULT_SEED
) -> list[Query]:
    """Writes a seeded hard copy of each query (box crop first) to `out_dir`; returns them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for query in queries:
        data, _ = transforms.transform_image_bytes(query.image_bytes(), query.id, seed)
        path = out_dir / f"{_file_stem(query.id)}.jpg"
        path.write_bytes(data)
        copies.append(Query(query.id + TRANSFORMED_SUFFIX, path, query.label, query.junk))
    return copies


def write_protocol(
    gallery: list[ImageEntry],
    queries: list[Query],
    query_sets: list[str],
    out_dir: Path,
    *,
    protocol: str = "",
    seed: int = transforms.DEFAULT_SEED,
) -> ProtocolFiles:
    """Writes gallery.csv and queries_<set>.csv (plain / transformed) into `out_dir`."""
    unknown = [s for s in query_sets if s not in QUERY_SETS]
    if unknown or not query_sets:
        raise ValueError(f"query sets must be among {', '.join(QUERY_SETS)}, got {query_sets}")
    files = {}
    for query_set in query_sets:
        chosen = queries
        if query_set == "transformed":
            chosen = transformed_queries(queries, out_dir / "transformed", seed)
        files[query_set] = write_queries(out_dir / f"queries_{query_set}.csv", chosen)
    return ProtocolFiles(protocol, write_gallery(out_dir / GALLERY_CSV, gallery), files)


def convert(
    dataset_dir: Path,
    out_dir: Path,
    *,
    protocol: str = "auto",
    query_sets: list[str] | None = None,
    limit: int = 0,
    per_label: int = 0,
    seed: int = transforms.DEFAULT_SEED,
) -> ProtocolFiles:
    """A dataset folder -> the protocol CSVs in `out_dir` (see the module docstring)."""
    resolved = detect_protocol(dataset_dir) if protocol == "auto" else protocol
    gallery, queries = plain_protocol(dataset_dir, resolved, limit, per_label)
    return write_protocol(
        gallery, queries, query_sets or ["plain"], out_dir, protocol=resolved, seed=seed
    )
