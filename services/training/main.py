"""The training job's process entry point (Kubernetes Job): ``python -m services.training.main``.

Endpoints from the environment like the services (``VISEARCH_REDIS_URL``,
``VISEARCH_S3_ENDPOINT``, ``VISEARCH_S3_ACCESS_KEY``, ``VISEARCH_S3_SECRET_KEY``, bucket names);
training settings from the command line. Prints one JSON summary line. Exit codes: 0 published,
3 refused (worse than the raw backbone, no ``--force``), 1 other errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.common.config import ObjectStoreConfig, env_str, redis_url_from_env
from services.common.errors import InvalidArgumentError, VisearchError
from services.common.logging_setup import configure_logging
from services.common.objectstore import S3ObjectStore
from services.common.tls import TlsConfig
from services.training.job import JobSettings, ModelWorseError, UpToDate, run_job
from services.training.settings import LOSSES, PipelineSettings, TrainConfig

EXIT_REFUSED = 3
log = logging.getLogger("services.training")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by every way of starting a training."""
    parser.add_argument("--collection", "-c", required=True)
    parser.add_argument("--dims", type=int, default=256, help="output dimensions")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument(
        "--holdout", type=float, default=PipelineSettings.holdout, help="labels held out"
    )
    parser.add_argument(
        "--holdout-photos", type=float, default=PipelineSettings.holdout_photos,
        help="fraction of the photos of each label with several held out",
    )  # fmt: skip
    parser.add_argument(
        "--tail-blocks", type=int, default=TrainConfig.tail_blocks,
        help="last backbone blocks fine-tuned with the head (0 = head only)",
    )  # fmt: skip
    parser.add_argument("--loss", choices=LOSSES, default=TrainConfig.loss)
    parser.add_argument(
        "--apply", action="store_true",
        help="then re-embed the collection with the model and switch (VISEARCH_GATEWAY)",
    )  # fmt: skip
    parser.add_argument(
        "--if-new", type=int, default=0, metavar="N",
        help="train only if the collection has >= N labelled images more than its model saw",
    )  # fmt: skip
    parser.add_argument(
        "--no-refit", dest="refit", action="store_false",
        help="publish the model trained without the held-out images",
    )  # fmt: skip
    parser.add_argument("--views", type=int, default=PipelineSettings.views)
    parser.add_argument("--hidden", type=int, default=0, help="MLP hidden units (0 = linear)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="publish even if worse")
    parser.add_argument("--parent-version", default="", help="default: the collection's")
    parser.add_argument("--cache-dir", type=Path, default=JobSettings.cache_dir)
    parser.add_argument("--model-cache-dir", type=Path, default=JobSettings.model_cache_dir)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all)")


def validate(
    dims: int,
    epochs: int,
    holdout: float,
    views: int,
    holdout_photos: float = 0.0,
    tail_blocks: int = 0,
    loss: str = "triplet",
) -> None:
    """Reject settings that cannot train, with the reason."""
    if not 2 <= dims <= 4096:
        raise InvalidArgumentError(f"--dims must be in [2, 4096], got {dims}")
    if epochs < 1:
        raise InvalidArgumentError(f"--epochs must be >= 1, got {epochs}")
    if not 0.0 <= holdout < 1.0:
        raise InvalidArgumentError(f"--holdout must be in [0, 1), got {holdout}")
    if not 0.0 <= holdout_photos < 1.0:
        raise InvalidArgumentError(f"--holdout-photos must be in [0, 1), got {holdout_photos}")
    if tail_blocks < 0:
        raise InvalidArgumentError(f"--tail-blocks must be >= 0, got {tail_blocks}")
    if tail_blocks == 0 and loss != "triplet":
        raise InvalidArgumentError(
            f"--loss {loss} trains the backbone's last blocks: use --tail-blocks >= 1, "
            "or --loss triplet for a head only"
        )
    if views < 0:
        raise InvalidArgumentError(f"--views must be >= 0, got {views}")


def job_settings(args: argparse.Namespace, env: Mapping[str, str]) -> JobSettings:
    """JobSettings from parsed options and bucket names from the environment."""
    validate(
        args.dims, args.epochs, args.holdout, args.views, args.holdout_photos, args.tail_blocks,
        args.loss,
    )  # fmt: skip
    train = TrainConfig(
        dims=args.dims, epochs=args.epochs, hidden=args.hidden, seed=args.seed,
        tail_blocks=args.tail_blocks, loss=args.loss, threads=args.threads or os.cpu_count() or 1,
    )  # fmt: skip
    pipeline = PipelineSettings(
        train=train, views=args.views, holdout=args.holdout,
        holdout_photos=args.holdout_photos, refit=args.refit,
    )  # fmt: skip
    return JobSettings(
        collection=args.collection,
        pipeline=pipeline,
        force=args.force,
        images_bucket=env_str(env, "VISEARCH_BUCKET_IMAGES", "images"),
        models_bucket=env_str(env, "VISEARCH_BUCKET_MODELS", "models"),
        cache_dir=args.cache_dir,
        model_cache_dir=args.model_cache_dir,
        threads=args.threads,
        parent_version=args.parent_version,
        min_new_images=args.if_new,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.training.main", description=__doc__)
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    env = os.environ
    configure_logging("training", env.get("VISEARCH_LOG_LEVEL", "INFO"))
    try:
        settings = job_settings(args, env)
        gateway = env_str(env, "VISEARCH_GATEWAY", "")
        if args.apply and not gateway:
            raise InvalidArgumentError("--apply needs VISEARCH_GATEWAY (host:port of a gateway)")
        # Read before the job runs: a missing certificate file fails now, not after training.
        gateway_tls = TlsConfig.gateway_client_from_env(env)
        store = S3ObjectStore.from_config(ObjectStoreConfig.from_env(env))
        result = run_job(settings, store, redis_url_from_env(env))
        if args.apply:
            from visearch.client import VisearchClient

            with VisearchClient(gateway, tls=gateway_tls) as client:
                for step in client.reembed(args.collection, result.version):
                    log.info("reembed", extra={"fields": {"phase": step.phase, "done": step.done}})
    except UpToDate as exc:
        skipped = {"up_to_date": True, "new_images": exc.new_images, "message": exc.message}
        print(json.dumps(skipped), flush=True)
        return 0
    except ModelWorseError as exc:
        print(json.dumps({"error": exc.message, **exc.result.summary()}), flush=True)
        return EXIT_REFUSED
    except VisearchError as exc:
        print(json.dumps({"error": exc.message, "status": exc.status}), flush=True)
        return 1
    print(json.dumps(result.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
