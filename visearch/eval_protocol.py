"""The generic evaluation protocol: a gallery CSV, query CSVs, and the retrieval metrics.

Files (UTF-8 CSV with a header; a relative ``path`` is relative to the CSV's folder):

- gallery: ``id,path,label`` - the images ingested into the collection.
- queries: ``id,path,label`` and optionally ``junk`` (gallery ids separated by spaces that
  count neither as hit nor miss for this query, e.g. Paris/Oxford junk) and ``bbox``
  (``x1 y1 x2 y2`` in pixels: the query is that crop of the image).

Relevance: a gallery item is relevant to a query when it has the query's (non-empty) label
and is not in the query's junk. A gallery item whose id equals the query's id is the query's
own image: it is dropped from the ranking for mAP, P@k and recall@k (as the Paris/Oxford
protocols remove the query from the database) and counts as relevant for the UKBench N-S
score, which is reported as applying only when every query has exactly
``NS_GROUP_SIZE`` relevant items counting its own image.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from visearch.datasets import ImageEntry

NS_GROUP_SIZE = 4  # UKBench: 4 photos per object; N-S counts them in the top 4
DEFAULT_KS = (1, 5, 10)
GALLERY_COLUMNS = ("id", "path", "label")
QUERY_COLUMNS = ("id", "path", "label", "junk", "bbox")


@dataclass(frozen=True)
class Query:
    """One query: an image (or a crop of it), its label and the gallery ids to ignore."""

    id: str
    path: Path
    label: str
    junk: frozenset[str] = field(default_factory=frozenset)
    bbox: tuple[float, float, float, float] | None = None

    def image_bytes(self) -> bytes:
        """The encoded query: the file's bytes, or its bbox crop as lossless PNG."""
        data = self.path.read_bytes()
        if self.bbox is None:
            return data
        with Image.open(io.BytesIO(data)) as image:
            x1, y1, x2, y2 = self.bbox
            crop = image.convert("RGB").crop(
                (int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2)))
            )
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        return buffer.getvalue()


def _resolve(csv_path: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else csv_path.parent / path


def _rows(csv_path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(required) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
        return list(reader)


def _check_unique(ids: Iterable[str], where: Path) -> None:
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise ValueError(f"{where}: repeated id(s) {', '.join(sorted(repeated)[:5])}")


def read_gallery(csv_path: Path) -> list[ImageEntry]:
    """Gallery CSV (id,path,label) -> entries with resolved paths."""
    rows = _rows(csv_path, ("id", "path"))
    entries = [
        ImageEntry(r["id"], _resolve(csv_path, r["path"]), r.get("label") or "") for r in rows
    ]
    _check_unique((e.id for e in entries), csv_path)
    return entries


def _bbox(value: str, where: str) -> tuple[float, float, float, float] | None:
    if not value.strip():
        return None
    parts = value.replace(",", " ").split()
    if len(parts) != 4:
        raise ValueError(f"{where}: bbox must be 'x1 y1 x2 y2', got {value!r}")
    x1, y1, x2, y2 = (float(p) for p in parts)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{where}: empty bbox {value!r}")
    return (x1, y1, x2, y2)


def read_queries(csv_path: Path) -> list[Query]:
    """Queries CSV (id,path,label[,junk][,bbox]) -> queries with resolved paths."""
    queries = []
    for row in _rows(csv_path, ("id", "path", "label")):
        queries.append(
            Query(
                id=row["id"],
                path=_resolve(csv_path, row["path"]),
                label=row["label"] or "",
                junk=frozenset((row.get("junk") or "").split()),
                bbox=_bbox(row.get("bbox") or "", f"{csv_path} query {row['id']}"),
            )
        )
    _check_unique((q.id for q in queries), csv_path)
    return queries


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def write_gallery(csv_path: Path, entries: Sequence[ImageEntry]) -> Path:
    """Writes a gallery CSV; paths below its folder are written relative to it."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(GALLERY_COLUMNS)
        for e in entries:
            writer.writerow([e.id, _relative(e.path, csv_path.parent), e.label])
    return csv_path


def write_queries(csv_path: Path, queries: Sequence[Query]) -> Path:
    """Writes a queries CSV (junk ids sorted, bbox as 'x1 y1 x2 y2')."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(QUERY_COLUMNS)
        for q in queries:
            bbox = " ".join(f"{v:g}" for v in q.bbox) if q.bbox else ""
            writer.writerow(
                [q.id, _relative(q.path, csv_path.parent), q.label, " ".join(sorted(q.junk)), bbox]
            )
    return csv_path


@dataclass(frozen=True)
class QueryScore:
    """One query's scores; `relevant` excludes junk and the query's own image."""

    average_precision: float
    precision_at: dict[int, float]
    recall_at: dict[int, float]
    hit_at: dict[int, float]
    ns: int  # relevant items (own image included) among the top 4, junk dropped
    relevant: int
    ns_group: int  # relevant + own image: N-S applies when this is NS_GROUP_SIZE


def score_query(
    ranked: Sequence[str],
    query: Query,
    gallery_labels: dict[str, str],
    ks: Sequence[int] = DEFAULT_KS,
) -> QueryScore:
    """Scores one ranking (result ids, best first; ids not in the gallery count as misses)."""
    own = query.id if query.id in gallery_labels else None
    relevant = {
        g
        for g, label in gallery_labels.items()
        if query.label and label == query.label and g not in query.junk and g != own
    }
    no_junk = [r for r in ranked if r not in query.junk]
    clean = [r for r in no_junk if r != own]
    hits, precision_sum = 0, 0.0
    for rank, result in enumerate(clean, start=1):
        if result in relevant:
            hits += 1
            precision_sum += hits / rank
    ap = precision_sum / len(relevant) if relevant else 0.0
    found_at = {k: sum(1 for r in clean[:k] if r in relevant) for k in ks}
    return QueryScore(
        average_precision=ap,
        precision_at={k: found_at[k] / k for k in ks},
        recall_at={k: found_at[k] / len(relevant) if relevant else 0.0 for k in ks},
        hit_at={k: 1.0 if found_at[k] else 0.0 for k in ks},
        ns=sum(1 for r in no_junk[:NS_GROUP_SIZE] if r in relevant or r == own),
        relevant=len(relevant),
        ns_group=len(relevant) + (1 if own is not None else 0),
    )


@dataclass(frozen=True)
class ProtocolScores:
    """Means over the queries that have at least one relevant item (`scored`)."""

    map: float
    p_at_1: float
    precision_at: dict[int, float]
    recall_at: dict[int, float]
    hit_at: dict[int, float]
    ns_score: float
    ns_applies: bool
    queries: int
    scored: int

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, rounded to 4 decimals; dict keys of P@k etc. are strings."""
        return {
            "map": round(self.map, 4),
            "p_at_1": round(self.p_at_1, 4),
            "p_at": {str(k): round(v, 4) for k, v in self.precision_at.items()},
            "recall_at": {str(k): round(v, 4) for k, v in self.recall_at.items()},
            "hit_at": {str(k): round(v, 4) for k, v in self.hit_at.items()},
            "ns_score": round(self.ns_score, 4),
            "ns_applies": self.ns_applies,
            "query_count": self.queries,
            "scored_queries": self.scored,
        }


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def score_protocol(
    rankings: dict[str, Sequence[str]],
    queries: Sequence[Query],
    gallery_labels: dict[str, str],
    ks: Sequence[int] = DEFAULT_KS,
) -> ProtocolScores:
    """rankings: query id -> result ids best first; a query with no ranking ranks nothing.

    A query without any relevant item is left out of mAP, P@k, recall@k (it could only
    score 0 and would say nothing about the search); N-S averages every query.
    """
    ks = sorted(set(ks) | {1})
    scores = [score_query(rankings.get(q.id, []), q, gallery_labels, ks) for q in queries]
    scored = [s for s in scores if s.relevant > 0]
    return ProtocolScores(
        map=_mean([s.average_precision for s in scored]),
        p_at_1=_mean([s.precision_at[1] for s in scored]),
        precision_at={k: _mean([s.precision_at[k] for s in scored]) for k in ks},
        recall_at={k: _mean([s.recall_at[k] for s in scored]) for k in ks},
        hit_at={k: _mean([s.hit_at[k] for s in scored]) for k in ks},
        ns_score=_mean([float(s.ns) for s in scores]),
        ns_applies=bool(scores) and all(s.ns_group == NS_GROUP_SIZE for s in scores),
        queries=len(scores),
        scored=len(scored),
    )


def parse_ks(spec: str) -> list[int]:
    """'1,5,10' -> [1, 5, 10] (positive, sorted, unique)."""
    try:
        ks = sorted({int(p) for p in spec.split(",") if p.strip()})
    except ValueError as exc:
        raise ValueError(f"--ks must be comma-separated integers, got {spec!r}") from exc
    if not ks or ks[0] < 1:
        raise ValueError(f"--ks must be positive integers, got {spec!r}")
    return ks
