"""`visearch train`: the training job (services/training) against the local stack's storage."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from services.common.errors import VisearchError
from services.common.objectstore import S3ObjectStore
from services.training.settings import PipelineSettings, TrainConfig
from visearch import localstack

console = Console(stderr=True)


def train(
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")],
    dims: Annotated[int, typer.Option(help="Output dimensions of the trained model.")] = 256,
    epochs: Annotated[int, typer.Option(help="Training epochs over the labelled images.")] = 20,
    holdout: Annotated[
        float, typer.Option(help="Fraction of labels held out (unseen labels).")
    ] = PipelineSettings.holdout,
    holdout_photos: Annotated[
        float, typer.Option(help="Fraction of each label's photos held out (known labels).")
    ] = PipelineSettings.holdout_photos,
    tail_blocks: Annotated[
        int, typer.Option(help="Last backbone blocks fine-tuned with the head (0 = head only).")
    ] = TrainConfig.tail_blocks,
    loss: Annotated[str, typer.Option(help="triplet or arcface.")] = TrainConfig.loss,
    refit: Annotated[
        bool, typer.Option(help="Once accepted, train again on every image before publishing.")
    ] = PipelineSettings.refit,
    views: Annotated[
        int, typer.Option(help="Augmented views per training image.")
    ] = PipelineSettings.views,
    hidden: Annotated[int, typer.Option(help="MLP hidden units (0 = linear head).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of split, views and training.")] = 0,
    force: Annotated[bool, typer.Option(help="Publish even if worse than the backbone.")] = False,
    parent_version: Annotated[str, typer.Option(help="Default: the collection's model.")] = "",
    cache_dir: Annotated[Path, typer.Option(help="Backbone feature cache.")] = Path(
        "~/.cache/visearch/train-features"
    ),
    if_new: Annotated[
        int,
        typer.Option(
            "--if-new", help="Train only if >= N labelled images more than the model saw."
        ),
    ] = 0,
    apply: Annotated[
        bool, typer.Option(help="Then re-embed the collection with the model and switch to it.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Folder of the local stack's state.")
    ] = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Train on the collection's labelled images (last backbone blocks + head); publish a model.

    Endpoints come from the local stack's state (VISEARCH_REDIS_URL / VISEARCH_S3_* override).
    Exits 3 without publishing when the model is worse on held-out photos and labels (unless
    --force). With --apply the collection is then re-embedded with it and switched to it.
    """
    from services.training.job import JobSettings, ModelWorseError, UpToDate, run_job
    from services.training.main import EXIT_REFUSED, job_settings

    state = localstack.StackState.load(state_dir.resolve())
    redis_url = os.environ.get("VISEARCH_REDIS_URL") or (state.redis_url if state else "")
    s3 = os.environ.get("VISEARCH_S3_ENDPOINT") or (state.s3_endpoint if state else "")
    if not redis_url or not s3:
        console.print(f"[red]No local stack in {state_dir} and no VISEARCH_REDIS_URL/S3 set.[/]")
        raise typer.Exit(2)
    store = S3ObjectStore(
        s3,
        os.environ.get("VISEARCH_S3_ACCESS_KEY") or (state.s3_access_key if state else ""),
        os.environ.get("VISEARCH_S3_SECRET_KEY") or (state.s3_secret_key if state else ""),
    )
    args = argparse.Namespace(
        collection=collection, dims=dims, epochs=epochs, holdout=holdout, views=views,
        holdout_photos=holdout_photos, tail_blocks=tail_blocks, loss=loss, refit=refit,
        hidden=hidden, seed=seed, force=force, parent_version=parent_version,
        cache_dir=cache_dir, model_cache_dir=JobSettings.model_cache_dir, threads=0,
        if_new=if_new,
    )  # fmt: skip
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, disable=not console.is_terminal,
    )  # fmt: skip
    try:
        with progress:
            task = progress.add_task("backbone features", total=None)
            result = run_job(
                job_settings(args, os.environ),
                store,
                redis_url,
                progress=lambda n: progress.advance(task, n),
                on_images=lambda n: progress.update(task, total=n),
            )
    except UpToDate as exc:
        console.print(exc.message)
        if as_json:
            sys.stdout.write(json.dumps({"up_to_date": True, "new_images": exc.new_images}) + "\n")
        return
    except ModelWorseError as exc:
        console.print(f"[red]refused[/]: {exc.message}")
        sys.stdout.write(json.dumps(exc.result.summary()) + "\n")
        raise typer.Exit(EXIT_REFUSED) from exc
    except VisearchError as exc:
        console.print(f"[red]{exc.status}[/]: {exc.message}")
        raise typer.Exit(1) from exc
    summary = result.summary()
    if apply:
        from visearch.cli import reembed  # the same command as `visearch reembed`

        reembed(collection, model=result.version, state_dir=state_dir)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    before, after = summary["metrics"]["before"]["all"], summary["metrics"]["after"]["all"]  # type: ignore[index]
    console.print(
        f"published model {result.version} ({result.outcome.head.dims}-d, parent "
        f"{result.parent_version}) in {result.wall_s:.0f}s: held-out mAP "
        f"{before['map']:.3f} → {after['map']:.3f}, P@1 {before['p_at_1']:.3f} → "
        f"{after['p_at_1']:.3f}"
    )
    if not apply:
        console.print(
            f"switch the collection to it: visearch reembed -c {collection} "
            f"--model {result.version} (or train with --apply)"
        )
