"""Long-running client jobs shared by the CLI, evaluation and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from visearch.client import IngestItem, QueryExpansion, SearchResult, VisearchClient
from visearch.datasets import ImageEntry
from visearch.evaluation import RetrievalScores, percentiles_ms, score_rankings

Progress = Callable[[int], None]


def _batches(entries: list[ImageEntry], size: int) -> Iterator[list[ImageEntry]]:
    for start in range(0, len(entries), size):
        yield entries[start : start + size]


def ingest_entries(
    client: VisearchClient,
    collection: str,
    entries: list[ImageEntry],
    *,
    batch_size: int = 8,
    workers: int = 2,
    progress: Progress | None = None,
) -> float:
    """Ingests entries in concurrent batches; returns images per second."""
    started = time.perf_counter()

    def send(batch: list[ImageEntry]) -> int:
        items = [IngestItem(e.id, image=e.path.read_bytes(), label=e.label) for e in batch]
        client.ingest(collection, items, create_collection=True)
        return len(batch)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done in pool.map(send, _batches(entries, batch_size)):
            if progress is not None:
                progress(done)
    elapsed = time.perf_counter() - started
    return len(entries) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class QueryResult:
    query: str
    result: SearchResult
    latency_ms: float


def search_entries(
    client: VisearchClient,
    collection: str,
    entries: list[ImageEntry],
    *,
    k: int = 10,
    rerank: str = "",
    label: str = "",
    attributes: dict[str, str] | None = None,
    workers: int = 4,
    progress: Progress | None = None,
    image_bytes: Callable[[ImageEntry], bytes] | None = None,
    return_matches: bool = False,
    query_expansion: QueryExpansion | None = None,
) -> list[QueryResult]:
    """Searches every entry concurrently, in input order (query_expansion: None = the
    collection's)."""
    read = image_bytes or (lambda entry: entry.path.read_bytes())

    def one(entry: ImageEntry) -> QueryResult:
        data = read(entry)
        t0 = time.perf_counter()
        result = client.search(
            collection,
            data,
            k=k,
            rerank=rerank,
            label=label,
            attributes=attributes,
            return_matches=return_matches,
            query_expansion=query_expansion,
        )
        return QueryResult(entry.id, result, (time.perf_counter() - t0) * 1000.0)

    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for query_result in pool.map(one, entries):
            results.append(query_result)
            if progress is not None:
                progress(1)
    return results


@dataclass(frozen=True)
class EvalReport:
    rerank: str
    scores: RetrievalScores
    latency_ms: dict[str, float]


def evaluate(
    results: list[QueryResult], labels: dict[str, str], rerank: str, query_in_gallery: bool = True
) -> EvalReport:
    """query_in_gallery=False for transformed query copies (see score_rankings)."""
    rankings = {r.query: [hit.id for hit in r.result.hits] for r in results}
    return EvalReport(
        rerank=rerank,
        scores=score_rankings(rankings, labels, query_in_gallery),
        latency_ms=percentiles_ms([r.latency_ms for r in results]),
    )
