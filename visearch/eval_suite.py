"""`visearch eval`: re-rank modes x local feature types x query sets of a generic protocol.

A mode is written ``RERANK[:FEATURE_TYPE]``: ``none``, ``texture``, ``geometric:rootsift``,
``geometric:delf``. The gallery is ingested once per feature type (a collection binds one
local feature type); ``none`` and ``texture`` do not use local features and run on the first
collection. The protocol (gallery, query sets with labels, junk and boxes, the metrics) is
``visearch.eval_protocol``; dataset folders are converted to it by ``visearch.eval_datasets``
(``plain``: the protocol's queries, an image's own gallery copy dropped from its ranking for
mAP / P@k, and texture mode does not train on it; ``transformed``: each query rotated, scaled,
cropped and JPEG-compressed by ``visearch.transforms`` with a per-image seed, the gallery
untouched, so the original is a relevant result). Optionally the gallery's collection is
trained on first (``visearch train`` in a subprocess, the same entry point users call, then
``reembed`` of every collection to the published model).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visearch import datasets, eval_datasets, eval_protocol, transforms
from visearch.client import NotFoundError, VisearchClient
from visearch.datasets import ImageEntry
from visearch.eval_protocol import Query
from visearch.evaluation import percentiles_ms
from visearch.jobs import QueryResult, ingest_entries, search_entries

QUERY_SETS = eval_datasets.QUERY_SETS
RERANK_MODES = ("none", "geometric", "texture")
PROTOCOLS = ("ukbench", "labels")  # load_entries; every dataset protocol: eval_datasets
EXIT_TRAIN_REFUSED = 3  # `visearch train`: the model was worse and not published
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


def parse_query_csvs(specs: list[str]) -> dict[str, Path]:
    """["[NAME=]PATH", ...] -> query set name (default: the file's stem) -> CSV path."""
    sets: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        csv_path = Path(path if sep else spec)
        name = name if sep else csv_path.stem
        if name in sets:
            raise ValueError(f"query set {name!r} given twice; name them NAME=PATH")
        sets[name] = csv_path
    return sets


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
    """Every entry queries the gallery of all entries: the protocol written to a temporary
    folder (transformed copies as files), then `run_protocol`; JSON-ready."""
    with tempfile.TemporaryDirectory(prefix="visearch-eval-") as folder:
        queries = [Query(e.id, e.path, e.label) for e in entries]
        files = eval_datasets.write_protocol(entries, queries, query_sets, Path(folder), seed=seed)
        report = run_protocol(
            client,
            eval_protocol.read_gallery(files.gallery),
            {name: eval_protocol.read_queries(path) for name, path in files.queries.items()},
            modes,
            k=k,
            workers=workers,
            collection_prefix=collection_prefix,
            progress=progress,
        )
    return {"transform_seed": seed, **report}


@dataclass(frozen=True)
class TrainSpec:
    """Train on the gallery first: `visearch train` options and the stack it reads."""

    state_dir: Path
    args: tuple[str, ...] = ()
    force: bool = False


def run_protocol(
    client: VisearchClient,
    gallery: list[ImageEntry],
    query_sets: dict[str, list[Query]],
    modes: list[EvalMode],
    *,
    k: int = 100,
    ks: Sequence[int] = eval_protocol.DEFAULT_KS,
    workers: int = 4,
    collection_prefix: str = "",
    progress: ProgressFactory | None = None,
    train: TrainSpec | None = None,
    run_command: CommandRunner | None = None,
) -> dict[str, object]:
    """Ingests the gallery per feature type (and trains), searches every (query set, mode)."""
    gallery_labels = {e.id: e.label for e in gallery}
    prefix = collection_prefix or f"eval-{int(time.time())}-{os.getpid()}"
    bar = progress or (lambda _description, _total: lambda _n: None)
    report: dict[str, object] = {
        "images": len(gallery),
        "labels": len(set(gallery_labels.values())),
        "query_sets": {name: len(queries) for name, queries in query_sets.items()},
        "k": k,
        "ks": sorted(set(ks) | {1}),
        "client_workers": workers,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    collections: dict[str, str] = {}
    ingest_rates: dict[str, float | None] = {}
    texture = any(mode.rerank == "texture" for mode in modes)  # runs on the first collection
    for feature_type in collection_feature_types(modes):
        name = f"{prefix}-{feature_type}"
        collections[feature_type] = name
        if collection_prefix and _holds(client, name, len(gallery)):
            ingest_rates[feature_type] = None  # reused: ingested by an earlier run
            continue
        client.create_collection(name, local_feature_type=feature_type, texture_features=texture)
        rate = ingest_entries(
            client, name, gallery, progress=bar(f"ingest {feature_type}", len(gallery))
        )
        ingest_rates[feature_type] = round(rate, 2)
    report["collections"] = collections
    report["ingest_images_per_s"] = ingest_rates
    if train is not None:
        report["training"] = train_on_gallery(
            client, list(collections.values()), train, run_command or _run_command
        )
    report["models"] = {
        feature_type: client.stats(name).collection.model_version
        for feature_type, name in collections.items()
    }
    first = next(iter(collections.values()))
    runs = []
    for query_set, queries in query_sets.items():
        by_id = {q.id: q for q in queries}
        query_labels = {q.id: q.label for q in queries}
        entries = [ImageEntry(q.id, q.path, q.label) for q in queries]
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
                image_bytes=_reader(by_id),
            )
            scores = eval_protocol.score_protocol(
                {r.query: [hit.id for hit in r.result.hits] for r in results},
                queries,
                gallery_labels,
                report["ks"],  # type: ignore[arg-type]
            )
            runs.append(_run_report(results, scores, query_labels, mode, query_set))
    report["runs"] = runs
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _reader(by_id: dict[str, Query]) -> Callable[[ImageEntry], bytes]:
    """Query bytes by id (a box query is cropped)."""
    return lambda entry: by_id[entry.id].image_bytes()


def _holds(client: VisearchClient, collection: str, images: int) -> bool:
    """True when `collection` exists with `images` images (a gallery to reuse)."""
    try:
        return client.stats(collection).images == images
    except NotFoundError:
        return False


# (argv) -> (exit code, stdout); stderr goes to the terminal (the training progress).
CommandRunner = Callable[[list[str]], tuple[int, str]]


def _run_command(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    return done.returncode, done.stdout


def train_command(collection: str, spec: TrainSpec) -> list[str]:
    """The `visearch train` command line (the CLI entry point users call)."""
    argv = [sys.executable, "-m", "visearch.cli", "train", "-c", collection, "--json"]
    argv += ["--state-dir", str(spec.state_dir), *spec.args]
    return argv + (["--force"] if spec.force and "--force" not in spec.args else [])


def _last_json(stdout: str) -> dict[str, object] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def train_on_gallery(
    client: VisearchClient, collections: list[str], spec: TrainSpec, run_command: CommandRunner
) -> dict[str, object]:
    """Trains on the first collection's labels, re-embeds every collection with the model.

    A refused model (the job's exit code 3: worse than its parent on held-out labels) is
    recorded and the collections keep their model; any other failure raises RuntimeError.
    """
    argv = train_command(collections[0], spec)
    started = time.perf_counter()
    code, stdout = run_command(argv)
    summary = _last_json(stdout)
    if code not in (0, EXIT_TRAIN_REFUSED) or summary is None:
        raise RuntimeError(f"`{' '.join(argv[2:])}` failed (exit {code}): {stdout[-500:]}")
    record: dict[str, object] = {
        "command": argv[2:],
        "published": code == 0,
        "train_wall_s": round(time.perf_counter() - started, 1),
        "summary": summary,
    }
    if code != 0:
        return record
    version = str(summary["version"])
    started = time.perf_counter()
    for collection in collections:
        for _step in client.reembed(collection, version):
            pass
    record["reembed_wall_s"] = round(time.perf_counter() - started, 1)
    return record


def _most_common(values: list[str]) -> str:
    return Counter(values).most_common(1)[0][0] if values else ""


def _run_report(
    results: list[QueryResult],
    scores: eval_protocol.ProtocolScores,
    query_labels: dict[str, str],
    mode: EvalMode,
    query_set: str,
) -> dict[str, object]:
    run: dict[str, object] = {
        "queries": query_set,
        "mode": mode.name,
        "rerank": mode.rerank,
        "feature_type": mode.feature_type if mode.rerank == "geometric" else "",
        "model": _most_common([r.result.model_version for r in results]),
        **scores.as_dict(),
        "partial_results": sum(1 for r in results if r.result.partial),
        "latency_ms": percentiles_ms([r.latency_ms for r in results]),
        "mean_stage_ms": {
            stage: round(float(np.mean([r.result.timings_ms.get(stage, 0.0) for r in results])), 2)
            for stage in STAGES
        },
    }
    if mode.rerank == "texture":
        run["texture"] = texture_summary(results, query_labels)
    return run


def texture_summary(results: list[QueryResult], labels: dict[str, str]) -> dict[str, float]:
    """How often the SVC voted (fallback = fewer than two labels) and how often it was right."""
    voted = [r for r in results if r.result.hits and r.result.hits[0].predicted_label]
    correct = sum(1 for r in voted if r.result.hits[0].predicted_label == labels[r.query])
    return {
        "vote_rate": round(len(voted) / len(results), 4) if results else 0.0,
        "vote_accuracy": round(correct / len(voted), 4) if voted else 0.0,
    }
