"""Build the models: ``python -m services.models.build --out models``.

Produces ``<out>/global/<version>/model.onnx`` and ``manifest.json``, then the DELF-style local
model ``<out>/local/<version>/`` (``services.models.delf_build``). Idempotent and quick
when up to date (it runs at every set-up): torch is imported only when a build is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from services.common.model_registry import sha256_file
from services.models.delf_build import DEFAULT_DATASETS, build_local

MODEL_NAME = "mobilenetv2-gem"
# Bump when anything that changes the embeddings changes (weights, pooling, default input size):
# vectors of different versions must never be mixed in one index.
BASE_VERSION = "mobilenetv2-gem-v1"
# Chosen by bench/global_model_input_size.py (bench/results/global_model_input_size.json):
# UKBench-1000 N-S 3.959 at 288 vs 3.935 at 224 and 3.962 at 448, for ~41% of 448's compute.
DEFAULT_INPUT_SIZE = (288, 288)
MODEL_FILENAME = "model.onnx"
MANIFEST_FILENAME = "manifest.json"


def version_for(input_size: tuple[int, int]) -> str:
    """Model version: the base version for the default size, else suffixed with ``-HxW``."""
    if tuple(input_size) == DEFAULT_INPUT_SIZE:
        return BASE_VERSION
    return f"{BASE_VERSION}-{input_size[0]}x{input_size[1]}"


def up_to_date(model_dir: Path, version: str, input_size: tuple[int, int]) -> dict[str, Any] | None:
    """Return the manifest if ``model_dir`` holds a complete build of this recipe, else None.

    Complete: the manifest parses, names this version and input size, and its sha256 equals
    the sha256 of ``model.onnx``.
    """
    manifest_path = model_dir / MANIFEST_FILENAME
    onnx_path = model_dir / MODEL_FILENAME
    if not (manifest_path.is_file() and onnx_path.is_file()):
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("version") != version or manifest.get("input_size") != list(input_size):
        return None
    if manifest.get("sha256") != sha256_file(onnx_path):
        return None
    return manifest


def build(
    out: Path,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    weights_cache: Path | None = None,
    force: bool = False,
) -> tuple[Path, dict[str, Any], bool]:
    """Build the global model under ``out`` unless already up to date.

    Returns ``(model_dir, manifest, built)`` where ``built`` is False when nothing was done.
    """
    version = version_for(input_size)
    model_dir = out / "global" / version
    if not force and (manifest := up_to_date(model_dir, version, input_size)) is not None:
        return model_dir, manifest, False
    from services.models.export import export_global_model  # imports torch: only when needed

    manifest, _ = export_global_model(
        model_dir / MODEL_FILENAME,
        model_dir / MANIFEST_FILENAME,
        MODEL_NAME,
        version,
        input_size,
        weights_cache,
    )
    return model_dir, manifest, True


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m services.models.build", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("models"), help="models root folder")
    parser.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"), default=list(DEFAULT_INPUT_SIZE)
    )
    parser.add_argument("--weights-cache", type=Path, default=None, help="weights cache folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--datasets", type=Path, default=DEFAULT_DATASETS, help="training data of the local model"
    )
    parser.add_argument(
        "--no-local", dest="local", action="store_false", help="skip the DELF-style local model"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints a one-line summary and returns the exit code."""
    args = _parse_args(argv)
    t0 = time.perf_counter()
    input_size = (args.input_size[0], args.input_size[1])
    model_dir, manifest, built = build(args.out, input_size, args.weights_cache, args.force)
    state = "built" if built else "up to date"
    print(
        f"global model {manifest['version']} {state}: {model_dir / MODEL_FILENAME} "
        f"sha256={manifest['sha256'][:12]} input={input_size[0]}x{input_size[1]} "
        f"({time.perf_counter() - t0:.2f}s)"
    )
    if not args.local:
        return 0
    t0 = time.perf_counter()
    local_dir, local, local_state = build_local(args.out, args.datasets, args.weights_cache)
    if local is None:
        print(f"local model skipped: no training data under {args.datasets}/ukbench1000")
    else:
        print(
            f"local model {local['version']} {local_state}: {local_dir / MODEL_FILENAME} "
            f"sha256={local['sha256'][:12]} ({time.perf_counter() - t0:.2f}s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
