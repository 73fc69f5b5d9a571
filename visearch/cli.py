"""The `visearch` command: local stack, ingest, search, eval. Talks to the gateway only."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from services.common.errors import VisearchError
from services.common.index_types import IndexOverrides
from visearch import datasets, demo, localstack
from visearch.client import SearchResult, VisearchClient
from visearch.jobs import evaluate, ingest_entries, search_entries

app = typer.Typer(help="visearch: visual instance search over gRPC.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()

StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Folder of the local stack's state, logs and data.")
]
Gateway = Annotated[
    str, typer.Option("--gateway", envvar="VISEARCH_GATEWAY", help="Gateway host:port.")
]
Collection = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]
RERANK_HELP = "Re-rank mode: none or geometric (default: the collection's)."


def _gateway(gateway: str, state_dir: Path) -> str:
    if gateway:
        return gateway
    state = localstack.StackState.load(state_dir.resolve())
    if state is None:
        console.print(
            f"[red]No gateway given and no local stack in {state_dir}.[/] Run `visearch up`."
        )
        raise typer.Exit(2)
    return state.gateway


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _fail(exc: VisearchError) -> None:
    console.print(f"[red]{exc.status}[/]: {exc.message}")
    raise typer.Exit(1)


@app.command()
def up(
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
    shards: Annotated[int, typer.Option(help="Indexer shards.")] = 2,
    models: Annotated[Path, typer.Option(help="Folder of built models.")] = (
        localstack.DEFAULT_MODELS_DIR
    ),
) -> None:
    """Start Valkey, SeaweedFS S3 and the services; return when all are SERVING."""
    current = localstack.status(state_dir)
    if current.get("running"):
        out.print(f"Already running: gateway at {current['gateway']} ({state_dir})")
        return
    if current.get("services"):
        localstack.down(state_dir)
    started = time.perf_counter()
    try:
        state = localstack.up(state_dir, shards, models)
    except localstack.StackError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    out.print(
        f"visearch is up in {time.perf_counter() - started:.1f}s (state in {state.state_dir})"
    )
    for process in state.processes:
        where = f" at {process.address}" if process.address else ""
        out.print(f"  {process.name:<12} pid {process.pid}{where}")
    out.print(f"Gateway: {state.gateway}   S3: {state.s3_endpoint}   Redis: {state.redis_url}")


@app.command()
def down(state_dir: StateDir = localstack.DEFAULT_STATE_DIR) -> None:
    """Stop the local stack (its data stays in the state folder)."""
    stopped = localstack.down(state_dir)
    out.print("stopped" if stopped else f"no stack running from {state_dir}")


@app.command()
def status(
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show the health of each process of the local stack."""
    report = localstack.status(state_dir)
    if as_json:
        out.print_json(json.dumps(report))
    else:
        table = Table("service", "pid", "alive", "serving", "address", "metrics")
        for s in report.get("services", []):  # type: ignore[union-attr]
            table.add_row(
                s["name"],
                str(s["pid"]),
                str(s["alive"]),
                str(s.get("serving", "")),
                s.get("address", ""),
                s.get("metrics", ""),
            )
        out.print(table)
    if not report.get("running"):
        raise typer.Exit(1)


@app.command()
def ingest(
    collection: Collection,
    directory: Annotated[Path | None, typer.Argument(help="Folder of images.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV with id,path,label.")] = None,
    label_regex: Annotated[str, typer.Option(help="Label from file name.")] = (
        datasets.DEFAULT_LABEL_REGEX
    ),
    batch_size: int = 8,
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Ingest a folder of images or a CSV manifest into a collection."""
    if (directory is None) == (manifest is None):
        console.print("[red]Give a DIRECTORY or --manifest, not both.[/]")
        raise typer.Exit(2)
    entries = (
        datasets.from_directory(directory, label_regex)
        if directory
        else datasets.from_manifest(manifest)  # type: ignore[arg-type]
    )
    with VisearchClient(_gateway(gateway, state_dir)) as client, _progress() as progress:
        task = progress.add_task("ingest", total=len(entries))
        try:
            rate = ingest_entries(
                client,
                collection,
                entries,
                batch_size=batch_size,
                progress=lambda n: progress.advance(task, n),
            )
        except VisearchError as exc:
            _fail(exc)
    out.print(f"ingested {len(entries)} images into {collection!r} ({rate:.1f} images/s)")


def _result_json(query: str, result: SearchResult) -> str:
    return json.dumps(
        {
            "query": query,
            "results": [
                {
                    "id": h.id,
                    "label": h.label,
                    "score": round(h.score, 6),
                    "global_score": round(h.global_score, 6),
                    "inliers": h.inliers,
                    "reason": h.reason,
                    "attributes": h.attributes,
                }
                for h in result.hits
            ],
            "partial": result.partial,
            "missing_shards": result.missing_shards,
            "timings_ms": result.timings_ms,
        }
    )


def _print_table(query: str, result: SearchResult) -> None:
    table = Table("rank", "id", "label", "score", "global", "inliers", "reason", title=query)
    for rank, h in enumerate(result.hits, start=1):
        table.add_row(
            str(rank),
            h.id,
            h.label,
            f"{h.score:.3f}",
            f"{h.global_score:.3f}",
            str(h.inliers),
            h.reason,
        )
    out.print(table)
    if result.partial:
        out.print(f"[yellow]partial: shards {result.missing_shards} did not answer[/]")
    out.print({k: round(v, 1) for k, v in result.timings_ms.items()})


@app.command()
def search(
    collection: Collection,
    image: Annotated[Path | None, typer.Argument(help="Query image.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV of queries: id,path[,label].")] = None,
    k: int = 10,
    rerank: Annotated[str, typer.Option(help=RERANK_HELP)] = "",
    label: Annotated[str, typer.Option(help="Only results with this label.")] = "",
    attr: Annotated[
        list[str] | None, typer.Option(help="Only results with attribute KEY=VALUE (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per query.")] = False,
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Search a collection by photo (one image, or a manifest of queries searched concurrently)."""
    attributes = {}
    for pair in attr or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            console.print(f"[red]--attr takes KEY=VALUE, got {pair!r}[/]")
            raise typer.Exit(2)
        attributes[key] = value
    if (image is None) == (manifest is None):
        console.print("[red]Give an IMAGE or --manifest, not both.[/]")
        raise typer.Exit(2)
    entries = (
        datasets.from_manifest(manifest)
        if manifest
        else [datasets.ImageEntry(str(image), image, "")]  # type: ignore[arg-type]
    )
    with VisearchClient(_gateway(gateway, state_dir)) as client, _progress() as progress:
        task = progress.add_task("search", total=len(entries))
        try:
            results = search_entries(
                client,
                collection,
                entries,
                k=k,
                rerank=rerank,
                label=label,
                attributes=attributes,
                progress=lambda n: progress.advance(task, n),
            )
        except VisearchError as exc:
            _fail(exc)
    for r in results:
        if as_json:
            sys.stdout.write(_result_json(r.query, r.result) + "\n")
        else:
            _print_table(r.query, r.result)


@app.command()
def delete(
    collection: Collection,
    ids: Annotated[list[str], typer.Argument(help="Ids to delete.")],
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Delete ids from a collection."""
    with VisearchClient(_gateway(gateway, state_dir)) as client:
        try:
            deleted, not_found = client.delete(collection, ids)
        except VisearchError as exc:
            _fail(exc)
    out.print(f"deleted {deleted}" + (f"; not found: {', '.join(not_found)}" if not_found else ""))


@app.command()
def get(
    collection: Collection,
    image_id: Annotated[str, typer.Argument(help="Id to show.")],
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Show one image's metadata."""
    with VisearchClient(_gateway(gateway, state_dir)) as client:
        try:
            record = client.get(collection, image_id)
        except VisearchError as exc:
            _fail(exc)
    out.print_json(json.dumps(record.__dict__))


@app.command(name="create-collection")
def create_collection(
    collection: Collection,
    rerank: Annotated[str, typer.Option(help="Default re-rank mode.")] = "none",
    rerank_depth: Annotated[int, typer.Option(help="Candidates re-ranked (0 = 50).")] = 0,
    exact_threshold: Annotated[int, typer.Option(help="Exact search below this (0 = auto).")] = 0,
    num_leaves: Annotated[int, typer.Option(help="ScaNN leaves (0 = auto).")] = 0,
    leaves_to_search: Annotated[int, typer.Option(help="ScaNN leaves searched (0 = auto).")] = 0,
    reorder: Annotated[int, typer.Option(help="ScaNN exact re-order depth (0 = auto).")] = 0,
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Create a collection with its defaults and index settings (ingest creates one too)."""
    index = IndexOverrides(exact_threshold, num_leaves, leaves_to_search, reorder)
    with VisearchClient(_gateway(gateway, state_dir)) as client:
        try:
            info = client.create_collection(
                collection, default_rerank=rerank, rerank_depth=rerank_depth, index=index
            )
        except VisearchError as exc:
            _fail(exc)
    out.print(info)


@app.command()
def stats(
    collection: Collection,
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Show a collection's configuration, size and shards."""
    with VisearchClient(_gateway(gateway, state_dir)) as client:
        try:
            report = client.stats(collection)
        except VisearchError as exc:
            _fail(exc)
    out.print(report)


@app.command(name="eval")
def eval_command(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder.")],
    protocol: Annotated[str, typer.Option(help="Only 'ukbench' for now.")] = "ukbench",
    rerank: Annotated[str, typer.Option(help="Comma-separated modes: none,geometric.")] = "none",
    limit: Annotated[int, typer.Option(help="Use only the first N images (0 = all).")] = 0,
    k: Annotated[int, typer.Option(help="Results per query (mAP is over these).")] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Ingest a labelled dataset into a fresh collection; print N-S, mAP and P@1 per mode."""
    if protocol != "ukbench":
        console.print(f"[red]unknown protocol {protocol!r}; supported: ukbench[/]")
        raise typer.Exit(2)
    entries = datasets.ukbench(dataset_dir, limit)
    labels = {e.id: e.label for e in entries}
    collection = f"eval-{int(time.time())}-{os.getpid()}"
    reports = []
    with VisearchClient(_gateway(gateway, state_dir), timeout_s=120) as client, _progress() as bar:
        try:
            task = bar.add_task("ingest", total=len(entries))
            rate = ingest_entries(
                client, collection, entries, progress=lambda n: bar.advance(task, n)
            )
            for mode in [m.strip() for m in rerank.split(",") if m.strip()]:
                task = bar.add_task(f"search ({mode})", total=len(entries))
                results = search_entries(
                    client,
                    collection,
                    entries,
                    k=k,
                    rerank=mode,
                    progress=lambda n, t=task: bar.advance(t, n),
                )
                reports.append(evaluate(results, labels, mode))
        except VisearchError as exc:
            _fail(exc)
    summary = {
        "dataset": str(dataset_dir),
        "images": len(entries),
        "collection": collection,
        "ingest_images_per_s": round(rate, 2),
        "modes": {
            r.rerank: {
                "ns_score": round(r.scores.ns_score, 4),
                "map": round(r.scores.map, 4),
                "p_at_1": round(r.scores.p_at_1, 4),
                "latency_ms": r.latency_ms,
            }
            for r in reports
        },
    }
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    table = Table("rerank", "N-S", "mAP", "P@1", "p50 ms", "p95 ms", title=str(dataset_dir))
    for r in reports:
        table.add_row(
            r.rerank,
            f"{r.scores.ns_score:.3f}",
            f"{r.scores.map:.3f}",
            f"{r.scores.p_at_1:.3f}",
            f"{r.latency_ms['p50']:.0f}",
            f"{r.latency_ms['p95']:.0f}",
        )
    out.print(table)
    out.print(f"ingest: {rate:.1f} images/s")


@app.command(name="demo")
def demo_command(
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Ingest scikit-image's sample photos, then search a rotated, cropped copy of one."""
    samples_dir = state_dir / "samples"
    demo.write_samples(samples_dir)
    entries = datasets.from_directory(samples_dir, label_regex=r"^sample-(.+)$")
    query = demo.rotated_cropped_query(samples_dir / f"sample-{demo.QUERY_SOURCE}.jpg")
    expected = f"sample-{demo.QUERY_SOURCE}"
    with VisearchClient(_gateway(gateway, state_dir), timeout_s=120) as client:
        try:
            ingest_entries(client, "demo", entries)
            out.print(f"ingested {len(entries)} sample photos into collection 'demo'")
            found = True
            for mode in ("none", "geometric"):
                result = client.search("demo", query, k=5, rerank=mode)
                _print_table(
                    f"rotated {demo.QUERY_ROTATION_DEGREES:.0f}°, cropped "
                    f"{demo.QUERY_CROP_FRACTION:.0%} copy of {expected} "
                    f"(rerank={mode})",
                    result,
                )
                found = found and bool(result.hits) and result.hits[0].id == expected
        except VisearchError as exc:
            _fail(exc)
    if not found:
        console.print(f"[red]the original {expected} was not the top result[/]")
        raise typer.Exit(1)
    out.print(f"[green]found the original ({expected}) first[/]. Stop the stack: visearch down")


if __name__ == "__main__":
    app()
