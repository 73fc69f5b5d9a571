"""The `visearch` command: local stack, ingest, search, eval. Talks to the gateway only."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from services.common.errors import VisearchError
from services.common.index_types import IndexOverrides
from visearch import (
    datasets,
    demo,
    eval_datasets,
    eval_protocol,
    eval_suite,
    localstack,
    transforms,
)
from visearch import show as show_results
from visearch.client import QueryExpansion, SearchResult, VisearchClient
from visearch.jobs import ingest_entries, search_entries
from visearch.keys_cli import keys_app
from visearch.reshard_cli import reshard as reshard_command
from visearch.training_cli import train as train_command

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
RERANK_HELP = "Re-rank mode: none, geometric or texture (default: the collection's)."


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


def _client(gateway: str, state_dir: Path, **kwargs: Any) -> VisearchClient:
    """A client of `gateway` (or of the local stack's), over TLS when the stack serves TLS
    or VISEARCH_GATEWAY_TLS_CA (_CERT, _KEY) name certificates."""
    tls = localstack.gateway_tls(gateway, state_dir)
    # The local stack's bootstrap key unless VISEARCH_API_KEY is set (None: the client's).
    kwargs.setdefault("api_key", localstack.gateway_api_key(gateway, state_dir))
    return VisearchClient(_gateway(gateway, state_dir), tls=tls, **kwargs)


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
    shards: Annotated[int, typer.Option(help="Indexer shards of new collections.")] = 2,
    models: Annotated[Path, typer.Option(help="Folder of built models.")] = (
        localstack.DEFAULT_MODELS_DIR
    ),
    indexers: Annotated[
        int, typer.Option(help="Indexer processes, >= --shards (spares to reshard onto).")
    ] = 0,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="TLS on every gRPC hop, mutual TLS inside; a local CA in STATE/tls."
        ),
    ] = False,
    appendfsync: Annotated[
        str,
        typer.Option(
            help="Valkey's fsync policy: everysec (default; VISEARCH_VALKEY_APPENDFSYNC) "
            "or always (fsync before every acknowledgement)."
        ),
    ] = "",
) -> None:
    """Start Valkey, SeaweedFS S3 and the services; return when all are SERVING."""
    if localstack.StackState.load(state_dir.resolve()) is not None:
        # Dead processes come back on their old ports; a new stack only if that fails.
        try:
            current, restarted = localstack.repair(state_dir)
        except localstack.StackError as exc:
            console.print(f"[yellow]Could not restart the old stack ({exc}); starting anew.[/]")
            localstack.down(state_dir)
        else:
            if restarted:
                out.print(f"Restarted on their old ports: {', '.join(restarted)}")
            out.print(f"Already running: gateway at {current.gateway} ({state_dir})")
            return
    started = time.perf_counter()
    try:
        state = localstack.up(
            state_dir, shards, models, indexers=indexers, tls=tls, appendfsync=appendfsync
        )
    except localstack.StackError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    out.print(
        f"visearch is up in {time.perf_counter() - started:.1f}s (state in {state.state_dir})"
    )
    for process in state.processes:
        where = f" at {process.address}" if process.address else ""
        out.print(f"  {process.name:<12} pid {process.pid}{where}")
    redis_url = localstack.redact_url(state.redis_url)
    out.print(f"Gateway: {state.gateway}   S3: {state.s3_endpoint}   Redis: {redis_url}")
    out.print(
        f"Auth: API keys required; the CLI uses the admin key in {state.state_dir}/"
        f"{localstack.SECRETS_FILE} unless VISEARCH_API_KEY is set"
    )
    if state.tls_dir:
        out.print(f"TLS: CA {state.tls_dir}/ca.pem, client certificate {state.tls_dir}/client.pem")


@app.command()
def down(state_dir: StateDir = localstack.DEFAULT_STATE_DIR) -> None:
    """Stop the local stack (its data stays in the state folder)."""
    stopped = localstack.down(state_dir)
    out.print("stopped" if stopped else f"no stack running from {state_dir}")


@app.command()
def restart(
    name: Annotated[str, typer.Argument(help="Process: gateway, embedder, indexer-0, valkey ...")],
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
    timeout_s: Annotated[float, typer.Option(help="Seconds to wait until it is healthy.")] = 120.0,
) -> None:
    """Restart one process of the local stack on its old ports; return when it is healthy."""
    started = time.perf_counter()
    try:
        info = localstack.restart(state_dir, name, timeout_s)
    except localstack.StackError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    where = f" at {info.address}" if info.address else ""
    out.print(
        f"{info.name} restarted{where} (pid {info.pid}) in {time.perf_counter() - started:.1f}s"
    )


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
        table = Table("service", "pid", "alive", "serving", "restarts", "address", "metrics")
        for s in report.get("services", []):  # type: ignore[union-attr]
            table.add_row(
                s["name"],
                str(s["pid"]),
                str(s["alive"]),
                str(s.get("serving", "")),
                str(s.get("restarts", 0)),
                s.get("address", ""),
                s.get("metrics", ""),
            )
        out.print(table)
        supervisor = report.get("supervisor")
        if isinstance(supervisor, dict):
            alive = "running" if supervisor["alive"] else "[red]not running[/]"
            out.print(f"supervisor: {alive} (pid {supervisor['pid']}; log in logs/supervisor.log)")
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
    with _client(gateway, state_dir) as client, _progress() as progress:
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
                    "matches": h.matches,
                    "inlier_ratio": round(h.inlier_ratio, 4),
                    "predicted_label": h.predicted_label,
                    "label_margin": round(h.label_margin, 4),
                    "reason": h.reason,
                    "attributes": h.attributes,
                }
                for h in result.hits
            ],
            "partial": result.partial,
            "missing_shards": result.missing_shards,
            "rerank_degraded": result.rerank_degraded,
            "rerank_degraded_reason": result.rerank_degraded_reason,
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
    if result.rerank_degraded:
        out.print(f"[yellow]{result.rerank_degraded_reason}[/]")
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
    show: Annotated[
        Path | None,
        typer.Option(help="Draw the query, its top results and their inlier matches to a PNG."),
    ] = None,
    qe_top_n: Annotated[
        int | None, typer.Option(help="Alpha query expansion over this many results (0 = off).")
    ] = None,
    qe_alpha: Annotated[float, typer.Option(help="Query expansion's alpha (0 = average).")] = 3.0,
    qe_verified: Annotated[
        bool | None,
        typer.Option(help="After geometric re-rank, search again with the verified results."),
    ] = None,
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Search a collection by photo (one image, or a manifest of queries searched concurrently).

    Query expansion is the collection's unless --qe-top-n or --qe-verified is given.
    """
    expansion = None
    if qe_top_n is not None or qe_verified is not None:
        expansion = QueryExpansion(qe_top_n or 0, qe_alpha, bool(qe_verified))
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
    if show is not None and image is None:
        console.print("[red]--show draws one query: give an IMAGE.[/]")
        raise typer.Exit(2)
    entries = (
        datasets.from_manifest(manifest)
        if manifest
        else [datasets.ImageEntry(str(image), image, "")]  # type: ignore[arg-type]
    )
    with _client(gateway, state_dir) as client, _progress() as progress:
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
                return_matches=show is not None,
                query_expansion=expansion,
            )
            if show is not None:
                _show(client, collection, entries[0].path.read_bytes(), results[0].result, show)
        except VisearchError as exc:
            _fail(exc)
    for r in results:
        if as_json:
            sys.stdout.write(_result_json(r.query, r.result) + "\n")
        else:
            _print_table(r.query, r.result)


def _show(
    client: VisearchClient, collection: str, query: bytes, result: SearchResult, path: Path
) -> None:
    hits = result.hits[: show_results.MAX_RESULTS]
    images = {hit.id: client.get_image(collection, hit.id) for hit in hits}
    show_results.write_png(path, show_results.render(query, hits, images))
    console.print(f"drew the query and {len(hits)} results to {path}")


@app.command()
def delete(
    collection: Collection,
    ids: Annotated[list[str], typer.Argument(help="Ids to delete.")],
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Delete ids from a collection."""
    with _client(gateway, state_dir) as client:
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
    with _client(gateway, state_dir) as client:
        try:
            record = client.get(collection, image_id)
        except VisearchError as exc:
            _fail(exc)
    out.print_json(json.dumps(record.__dict__))


@app.command(name="create-collection")
def create_collection(
    collection: Collection,
    rerank: Annotated[
        str, typer.Option(help="Default re-rank mode: none, geometric, texture (empty = none).")
    ] = "",
    rerank_depth: Annotated[int, typer.Option(help="Candidates re-ranked (0 = 50).")] = 0,
    exact_threshold: Annotated[int, typer.Option(help="Exact search below this (0 = auto).")] = 0,
    num_leaves: Annotated[int, typer.Option(help="ScaNN leaves (0 = auto).")] = 0,
    leaves_to_search: Annotated[int, typer.Option(help="ScaNN leaves searched (0 = auto).")] = 0,
    reorder: Annotated[int, typer.Option(help="ScaNN exact re-order depth (0 = auto).")] = 0,
    local_features: Annotated[
        str, typer.Option(help="Local features for geometric re-rank: rootsift or delf.")
    ] = "",
    texture: Annotated[
        bool, typer.Option(help="Store LBP texture histograms at ingest (for --rerank texture).")
    ] = False,
    qe_top_n: Annotated[
        int | None,
        typer.Option(
            help="Alpha query expansion over this many results (0 = off; 3 helps when each "
            "object has many images, see docs/query_expansion.md)."
        ),
    ] = None,
    qe_alpha: Annotated[float, typer.Option(help="Query expansion's alpha (0 = average).")] = 3.0,
    qe_verified: Annotated[
        bool | None,
        typer.Option(help="After geometric re-rank, search again with the verified results."),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="Global model version, e.g. efficientnet-lite2-gem-v1 (empty = default)."
        ),
    ] = "",
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Create a collection with its defaults and index settings (ingest creates one too).

    Again on an existing collection: its settings when those given match, else ALREADY_EXISTS.
    """
    index = IndexOverrides(exact_threshold, num_leaves, leaves_to_search, reorder)
    with _client(gateway, state_dir) as client:
        try:
            info = client.create_collection(
                collection,
                default_rerank=rerank,
                rerank_depth=rerank_depth,
                index=index,
                local_feature_type=local_features,
                texture_features=texture,
                model_version=model,
                query_expansion=None
                if qe_top_n is None and qe_verified is None
                else QueryExpansion(qe_top_n or 0, qe_alpha, bool(qe_verified)),
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
    with _client(gateway, state_dir) as client:
        try:
            report = client.stats(collection)
        except VisearchError as exc:
            _fail(exc)
    out.print(report)


@app.command()
def reembed(
    collection: Collection,
    model: Annotated[str, typer.Option("--model", help="Registered model version to switch to.")],
    batch_size: Annotated[int, typer.Option(help="Images per embedder call / checkpoint.")] = 32,
    max_rate: Annotated[
        float, typer.Option(help="Images per second at most (0 = unlimited).")
    ] = 0.0,
    drop_grace: Annotated[
        float, typer.Option(help="Seconds before the old generation is dropped (-1 = default).")
    ] = -1.0,
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Re-embed a collection with another model version, then switch to it in one step.

    Searches keep using the old version until the switch; run it again to resume after a crash.
    """
    with _client(gateway, state_dir) as client, _progress() as progress:
        task = progress.add_task(f"re-embed {collection} -> {model}", total=None)
        try:
            for step in client.reembed(
                collection,
                model,
                batch_size=batch_size,
                max_images_per_second=max_rate,
                drop_grace_s=drop_grace,
            ):
                progress.update(task, total=step.total, completed=step.done)
                if step.phase in ("started", "resumed", "switched", "done", "noop"):
                    console.print(
                        f"{step.phase}: {collection} {step.previous_model_version} -> "
                        f"{step.model_version} (generation {step.generation}, "
                        f"{step.done}/{step.total} images, "
                        f"{step.batches_skipped} batches done before)"
                    )
        except VisearchError as exc:
            _fail(exc)
    out.print(f"{collection!r} now uses {model}")


@app.command()
def dba(
    collection: Collection,
    top_n: Annotated[
        int, typer.Option(help="Neighbours combined into each vector, 1..50 (0 = turn DBA off).")
    ] = 2,
    alpha: Annotated[float, typer.Option(help="Similarity exponent of their weights.")] = 3.0,
    page_size: Annotated[int, typer.Option(help="Vectors per shard call (0 = 256).")] = 0,
    drop_grace: Annotated[
        float, typer.Option(help="Seconds before the replaced copy is dropped (-1 = default).")
    ] = -1.0,
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Database-side augmentation: one pass, then searches use the augmented vectors.

    Each stored vector is combined with its top-n stored neighbours (docs/query_expansion.md says
    when that helps). Run it again after bulk changes; `--top-n 0` turns it off.
    """
    with _client(gateway, state_dir) as client, _progress() as progress:
        task = progress.add_task(f"augment {collection}", total=None)
        try:
            for step in client.augment_database(
                collection, top_n, alpha=alpha, page_size=page_size, drop_grace_s=drop_grace
            ):
                progress.update(task, total=step.total, completed=step.done)
                if step.phase != "augmenting":
                    console.print(
                        f"{step.phase}: {collection} pass {step.dba_pass} "
                        f"({step.done}/{step.total} vectors)"
                    )
        except VisearchError as exc:
            _fail(exc)
    out.print(f"{collection!r}: database-side augmentation {'off' if top_n == 0 else 'done'}")


@app.command(name="eval")
def eval_command(
    dataset_dir: Annotated[
        Path | None,
        typer.Argument(help="Dataset folder, converted to the CSV protocol (or --gallery)."),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="Dataset protocol: auto (from groundtruth.csv), ukbench, labels, smvs, "
            "smvs-all, paris, paris-all (visearch/eval_datasets.py)."
        ),
    ] = "auto",
    gallery_csv: Annotated[
        Path | None, typer.Option("--gallery", help="Generic protocol: gallery CSV id,path,label.")
    ] = None,
    query_csvs: Annotated[
        list[str] | None,
        typer.Option(
            "--query-csv",
            help="Generic protocol: [NAME=]queries CSV id,path,label[,junk][,bbox]; repeatable.",
        ),
    ] = None,
    rerank: Annotated[
        str,
        typer.Option(
            help="Comma-separated modes RERANK[:FEATURE_TYPE], e.g. "
            "none,geometric:rootsift,geometric:delf,texture."
        ),
    ] = "none",
    queries: Annotated[
        str, typer.Option(help="Query sets: plain, transformed (rotated/scaled/cropped/JPEG).")
    ] = "plain",
    limit: Annotated[
        int, typer.Option(help="First N images (ukbench, labels) or queries (0 = all).")
    ] = 0,
    per_label: Annotated[int, typer.Option(help="labels protocol: first N per label.")] = 0,
    k: Annotated[int, typer.Option(help="Results per query (mAP is over these).")] = 100,
    ks: Annotated[str, typer.Option(help="P@k, recall@k and hit@k at these k.")] = "1,5,10",
    workers: Annotated[int, typer.Option(help="Concurrent search clients.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the query transforms.")] = (
        transforms.DEFAULT_SEED
    ),
    protocol_dir: Annotated[
        Path | None,
        typer.Option(help="Write the dataset's protocol CSVs here (default: a temporary folder)."),
    ] = None,
    convert_only: Annotated[
        bool, typer.Option(help="Only write the protocol CSVs (--protocol-dir), search nothing.")
    ] = False,
    train: Annotated[
        bool, typer.Option(help="Train on the gallery (visearch train), re-embed, then search.")
    ] = False,
    train_args: Annotated[
        str, typer.Option(help="Extra `visearch train` options, e.g. '--epochs 5 --views 3'.")
    ] = "",
    train_force: Annotated[
        bool, typer.Option(help="Pass --force to train (publish even if worse).")
    ] = False,
    out_json: Annotated[
        Path | None,
        typer.Option("--out", help="Write the report here (bench/results/eval_*.json)."),
    ] = None,
    collection_prefix: Annotated[
        str,
        typer.Option(
            help="Collections PREFIX-<feature type>; one that already holds the dataset is "
            "reused instead of ingested again (default: fresh eval-<time>-<pid>)."
        ),
    ] = "",
    note: Annotated[
        str, typer.Option(help="Free text kept in the report (e.g. the server settings).")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    gateway: Gateway = "",
    state_dir: StateDir = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Evaluate search on a labelled set: mAP, P@k, recall@k, N-S, latency per mode.

    A dataset folder is converted to the generic CSV protocol (gallery + query sets with
    labels, junk and boxes) and evaluated like --gallery/--query-csv files: the gallery is
    ingested into fresh collections (trained on first with --train), every query set searched.
    """
    with contextlib.ExitStack() as cleanup:
        try:
            modes = eval_suite.parse_modes(rerank)
            k_list = eval_protocol.parse_ks(ks)
            if dataset_dir is not None:
                folder = protocol_dir or Path(
                    cleanup.enter_context(tempfile.TemporaryDirectory(prefix="visearch-eval-"))
                )
                files = eval_datasets.convert(
                    dataset_dir,
                    folder,
                    protocol=protocol,
                    query_sets=eval_suite.parse_query_sets(queries),
                    limit=limit,
                    per_label=per_label,
                    seed=seed,
                )
            elif gallery_csv is not None and query_csvs:
                files = eval_datasets.ProtocolFiles(
                    "csv", gallery_csv, eval_suite.parse_query_csvs(query_csvs)
                )
            else:
                raise ValueError("give a dataset folder, or --gallery and --query-csv")
            gallery = eval_protocol.read_gallery(files.gallery)
            query_sets = {n: eval_protocol.read_queries(p) for n, p in files.queries.items()}
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from exc
        if convert_only:
            out.print(f"gallery: {files.gallery} ({len(gallery)} images)")
            for name, path in files.queries.items():
                out.print(f"queries {name}: {path} ({len(query_sets[name])})")
            return
        spec = None
        if train:
            spec = eval_suite.TrainSpec(state_dir, tuple(shlex.split(train_args)), train_force)
        with (
            _client(gateway, state_dir, timeout_s=120) as client,
            _progress() as bar,
        ):

            def advance(description: str, total: int) -> Callable[[int], None]:
                task = bar.add_task(description, total=total)
                return lambda n: bar.advance(task, n)

            try:
                report = eval_suite.run_protocol(
                    client,
                    gallery,
                    query_sets,
                    modes,
                    k=k,
                    ks=k_list,
                    workers=workers,
                    collection_prefix=collection_prefix,
                    progress=advance,
                    train=spec,
                )
            except VisearchError as exc:
                _fail(exc)
            except RuntimeError as exc:
                console.print(f"[red]{exc}[/]")
                raise typer.Exit(1) from exc
    report = {
        "dataset": str(dataset_dir if dataset_dir is not None else files.gallery),
        "protocol": files.protocol,
        "note": note,
        "transform_seed": seed,
        **report,
    }
    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    at = [str(k_list[-1])] if k_list[-1] != 1 else []  # the largest k only (width)
    table = Table(
        "queries", "mode", "N-S", "mAP", "P@1", *(f"P@{x}" for x in at),
        *(f"R@{x}" for x in at), "p50 ms", "p95 ms",
        title=f"{report['dataset']} ({files.protocol})",
    )  # fmt: skip
    for run in report["runs"]:  # type: ignore[union-attr]
        table.add_row(
            run["queries"],
            run["mode"],
            f"{run['ns_score']:.3f}" if run["ns_applies"] else "-",
            f"{run['map']:.3f}",
            f"{run['p_at_1']:.3f}",
            *(f"{run['p_at'][x]:.3f}" for x in at),
            *(f"{run['recall_at'][x]:.3f}" for x in at),
            f"{run['latency_ms']['p50']:.0f}",
            f"{run['latency_ms']['p95']:.0f}",
        )
    out.print(table)
    out.print(f"ingest images/s: {report['ingest_images_per_s']}; models: {report['models']}")
    if "training" in report:
        out.print(f"training: {json.dumps(report['training'])[:400]}")


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
    with _client(gateway, state_dir, timeout_s=120) as client:
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


app.command(name="train")(train_command)
app.command(name="reshard")(reshard_command)
app.add_typer(keys_app, name="keys")


if __name__ == "__main__":
    app()
