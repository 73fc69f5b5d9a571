"""`visearch reshard`: move a collection to another shard count, showing progress."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.common.errors import VisearchError
from visearch import localstack
from visearch.client import ReshardProgress, VisearchClient

console = Console(stderr=True)
out = Console()
POLL_S = 0.5
# How long after a job stopped without an error the command keeps restarting it.
RESUME_FOR_S = 120.0


def reshard(
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")],
    shards: Annotated[int, typer.Option(help="The new number of shards.")],
    wait: Annotated[
        bool, typer.Option(help="Follow the job until it is done (it runs in the gateway).")
    ] = True,
    gateway: Annotated[
        str, typer.Option("--gateway", envvar="VISEARCH_GATEWAY", help="Gateway host:port.")
    ] = "",
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Folder of the local stack's state.")
    ] = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Move a collection to SHARDS shards, moving only the ids whose shard changes.

    Searches, ingests and deletes keep working meanwhile. On the local stack, missing
    indexers are started first (the gateway restarts once, for a few seconds). Run it
    again to resume a reshard that stopped.
    """
    if not gateway:
        state = localstack.StackState.load(state_dir.resolve())
        if state is None:
            console.print(f"[red]No gateway given and no local stack in {state_dir}.[/]")
            raise typer.Exit(2)
        if shards > (state.indexers or state.shards):
            console.print(f"Starting indexers up to {shards} (the gateway restarts once)...")
            state = localstack.scale_indexers(state_dir, shards)
        gateway = state.gateway
    try:
        tls = localstack.gateway_tls(gateway, state_dir)
        api_key = localstack.gateway_api_key(gateway, state_dir)
        with VisearchClient(gateway, timeout_s=60, tls=tls, api_key=api_key) as client:
            status = _start(client, collection, shards)
            if wait:
                status = _follow(client, collection, status)
    except VisearchError as exc:
        console.print(f"[red]{exc.status}[/]: {exc.message}")
        raise typer.Exit(1) from exc
    _print(status)
    if status.phase == "failed" or (wait and status.phase in ("copying", "cleaning")):
        raise typer.Exit(1)


def _start(client: VisearchClient, collection: str, shards: int) -> ReshardProgress:
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.reshard(collection, shards)
        except VisearchError as exc:
            # A just-restarted gateway may still be loading.
            if exc.status != "UNAVAILABLE" or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _poll(client: VisearchClient, collection: str) -> ReshardProgress:
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.reshard_status(collection)
        except VisearchError as exc:
            if exc.status != "UNAVAILABLE" or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _follow(client: VisearchClient, collection: str, status: ReshardProgress) -> ReshardProgress:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("", total=None, detail="")
        stopped_since: float | None = None
        while status.running or status.phase in ("copying", "cleaning"):
            progress.update(
                task,
                description=f"{status.phase} {status.from_shards}->{status.to_shards}",
                total=max(status.total, status.scanned) or None,
                completed=status.scanned,
                detail=f"copied {status.copied} skipped {status.skipped} removed {status.removed}",
            )
            if not status.running:
                # The gateway running it went away (restart, rollout): resume it, unless
                # it stopped on an error, which is reported below.
                stopped_since = stopped_since or time.monotonic()
                if status.error or time.monotonic() - stopped_since > RESUME_FOR_S:
                    break
                time.sleep(POLL_S)
                status = _start(client, collection, status.to_shards)
                continue
            stopped_since = None
            time.sleep(POLL_S)
            status = _poll(client, collection)
    return status


def _print(status: ReshardProgress) -> None:
    stopped = not status.running and status.phase in ("copying", "cleaning")
    if status.phase == "failed" or status.error or stopped:
        out.print(
            f"[red]Reshard of {status.collection} to {status.to_shards} shards stopped "
            f"({status.error or 'the gateway running it went away'}).[/] Run the same command "
            "again to resume it."
        )
        return
    if status.phase in ("none", "done") and status.from_shards == status.to_shards:
        out.print(f"{status.collection} already has {status.to_shards} shards.")
        return
    verb = "moved" if status.phase == "done" else f"is {status.phase}"
    out.print(
        f"{status.collection}: {status.from_shards} -> {status.to_shards} shards {verb}: "
        f"{status.copied} ids copied ({status.skipped} skipped as newer or deleted), "
        f"{status.removed} removed from their old shards."
    )
