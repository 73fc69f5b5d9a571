"""`visearch eval`: re-rank modes x local feature types x plain / transformed queries.

A mode is written ``RERANK[:FEATURE_TYPE]``: ``none``, ``texture``, ``geometric:rootsift``,
``geometric:delf``. The gallery is ingested once per feature type (a collection binds one
local feature type); ``none`` and ``texture`` do not use local features and run on the first
collection. Query sets: ``plain`` (the gallery images themselves; each query is dropped from
its own ranking for mAP / P@1, and texture mode does not train on the query's own copy) and
``transformed`` (each query rotated, scaled, cropped and JPEG-compressed by
``visearch.transforms`` with a per-image seed; the gallery untouched, so the original is a
relevant result).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from visearch import datasets, transforms
from visearch.client import NotFoundError, VisearchClient
from visearch.datasets import ImageEntry
from visearch.jobs import QueryResult, evaluate, ingest_entries, search_entries

QUERY_SETS = ("plain", "transformed")
RERANK_MODES = ("none", "geometric", "texture")
PROTOCOLS = ("ukbench", "labels")
STAGES = ("embed", "local", "texture", "index", "metadata", "rerank", "total")
DEFAULT_FEATURE_TYPE = "rootsift"

# A progress callback factory: (description, total) -> advance(n).
ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class EvalMode:
    rerank: str
    feature_type: str

    @property
    def name(self) -> str:
        return f"{self.rerank}:{self.feature_type}" if self.rerank == "geometric" else self.rerank


def parse_modes(spec: str) -> list[EvalMode]:
    """ "none,geometric:delf,texture" -> modes; geometric without a type uses rootsift."""
    modes = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        rerank, _, feature_type = part.partition(":")
        if rerank not in RERANK_MODES:
            raise ValueError(f"unknown re-rank mode {rerank!r}; use {', '.join(RERANK_MODES)}")
        if feature_type and rerank != "geometric":
            raise ValueError(f"{part!r}: only geometric takes a local feature type")
        modes.append(EvalMode(rerank, feature_type or DEFAULT_FEATURE_TYPE))
    if not modes:
        raise ValueError("no re-rank mode given")
    return modes


def parse_query_sets(spec: str) -> list[str]:
    sets = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in sets if s not in QUERY_SETS]
    if unknown or not sets:
        raise ValueError(f"query sets must be among {', '.join(QUERY_SETS)}, got {spec!r}")
    return sets


def load_entries(dataset_dir: Path, protocol: str, limit: int, per_label: int) -> list[ImageEntry]:
    if protocol == "ukbench":
        return datasets.ukbench(dataset_dir, limit)
    if protocol == "labels":
        entries = datasets.labelled(dataset_dir, per_label)
        return entries[:limit] if limit else entries
    raise ValueError(f"unknown protocol {protocol!r}; use {', '.join(PROTOCOLS)}")


def collection_feature_types(modes: list[EvalMode]) -> list[str]:
    """One collection per local feature type geometric modes need (at least one)."""
    types = [m.feature_type for m in modes if m.rerank == "geometric"]
    return list(dict.fromkeys(types)) or [DEFAULT_FEATURE_TYPE]


def run_suite(
    client: VisearchClient,
    entries: list[ImageEntry],
    modes: list[EvalMode],
    query_sets: list[str],
    *,
    k: int = 100,
    workers: int = 4,
    seed: int = transforms.DEFAULT_SEED,
    collection_prefix: str = "",
    progress: ProgressFactory | None = None,
) -> dict[str, object]:
    """Ingests the gallery per feature type, searches every (query set, mode); JSON-ready."""
    labels = {e.id: e.label for e in entries}
    prefix = collection_prefix or f"eval-{int(time.time())}-{os.getpid()}"
    bar = progress or (lambda _description, _total: lambda _n: None)
    report: dict[str, object] = {
        "images": len(entries),
        "labels": len(set(labels.values())),
        "k": k,
        "client_workers": workers,
        "transform_seed": seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    collections: dict[str, str] = {}
    ingest_rates: dict[str, float | None] = {}
    texture = any(mode.rerank == "texture" for mode in modes)  # runs on the first collection
    for feature_type in collection_feature_types(modes):
        name = f"{prefix}-{feature_type}"
        collections[feature_type] = name
        if collection_prefix and _holds(client, name, len(entries)):
            ingest_rates[feature_type] = None  # reused: ingested by an earlier run
            continue
        client.create_collection(name, local_feature_type=feature_type, texture_features=texture)
        rate = ingest_entries(
            client, name, entries, progress=bar(f"ingest {feature_type}", len(entries))
        )
        ingest_rates[feature_type] = round(rate, 2)
    report["collections"] = collections
    report["ingest_images_per_s"] = ingest_rates
    first = next(iter(collections.values()))
    runs = []
    for query_set in query_sets:
        read = None
        if query_set == "transformed":
            read = partial(_transformed_bytes, seed=seed)
        for mode in modes:
            collection = collections[mode.feature_type] if mode.rerank == "geometric" else first
            results = search_entries(
                client,
                collection,
                entries,
                k=k,
                rerank=mode.rerank,
                workers=workers,
                progress=bar(f"{query_set} {mode.name}", len(entries)),
                image_bytes=read,
            )
            runs.append(_run_report(results, labels, mode, query_set))
    report["runs"] = runs
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _holds(client: VisearchClient, collection: str, images: int) -> bool:
    """True when `collection` exists with `images` images (a gallery to reuse)."""
    try:
        return client.stats(collection).images == images
    except NotFoundError:
        return False


def _transformed_bytes(entry: ImageEntry, seed: int) -> bytes:
    data, _ = transforms.transform_image_bytes(entry.path.read_bytes(), entry.id, seed)
    return data


def _run_report(
    results: list[QueryResult], labels: dict[str, str], mode: EvalMode, query_set: str
) -> dict[str, object]:
    report = evaluate(results, labels, mode.name, query_in_gallery=query_set == "plain")
    run: dict[str, object] = {
        "queries": query_set,
        "mode": mode.name,
        "rerank": mode.rerank,
        "feature_type": mode.feature_type if mode.rerank == "geometric" else "",
        "ns_score": round(report.scores.ns_score, 4),
        "map": round(report.scores.map, 4),
        "p_at_1": round(report.scores.p_at_1, 4),
        "latency_ms": report.latency_ms,
        "mean_stage_ms": {
            stage: round(float(np.mean([r.result.timings_ms.get(stage, 0.0) for r in results])), 2)
            for stage in STAGES
        },
    }
    if mode.rerank == "texture":
        run["texture"] = texture_summary(results, labels)
    return run


def texture_summary(results: list[QueryResult], labels: dict[str, str]) -> dict[str, float]:
    """How often the SVC voted (fallback = fewer than two labels) and how often it was right."""
    voted = [r for r in results if r.result.hits and r.result.hits[0].predicted_label]
    correct = sum(1 for r in voted if r.result.hits[0].predicted_label == labels[r.query])
    return {
        "vote_rate": round(len(voted) / len(results), 4) if results else 0.0,
        "vote_accuracy": round(correct / len(voted), 4) if voted else 0.0,
    }
