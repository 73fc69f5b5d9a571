"""Build the models: ``python -m services.models.build --out models``.

Produces ``<out>/global/<version>/model.onnx`` and ``manifest.json`` for every global recipe
(:data:`services.models.recipes.RECIPES`: MobileNetV2-GeM, EfficientNet-Lite2-GeM and the
multi-scale MobileNetV2-GeM), then the DELF-style local model ``<out>/local/<version>/``
(``services.models.delf_build``). Idempotent and quick when up to date (it runs at every
set-up): torch is imported only when a build is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from services.common.model_registry import sha256_file
from services.models.delf_build import build_local
from services.models.recipes import RECIPES, GlobalRecipe

# The default global model (the one deployments name in VISEARCH_MODEL_VERSION). Switching it
# is one line here; its version and input size follow from its recipe.
DEFAULT_MODEL = "mobilenetv2-gem"
DEFAULT_RECIPE: GlobalRecipe = RECIPES[DEFAULT_MODEL]
MODEL_NAME = DEFAULT_RECIPE.name
# A recipe's version changes when anything that changes its embeddings changes (weights,
# pooling, default input size): vectors of different versions are never mixed in one index.
BASE_VERSION = DEFAULT_RECIPE.base_version
DEFAULT_INPUT_SIZE = DEFAULT_RECIPE.input_size
MODEL_FILENAME = "model.onnx"
MANIFEST_FILENAME = "manifest.json"


def version_for(input_size: tuple[int, int], recipe: GlobalRecipe = DEFAULT_RECIPE) -> str:
    """Model version: the base version for the default size, else suffixed with ``-HxW``."""
    return recipe.version_for(input_size)


def up_to_date(
    model_dir: Path,
    version: str,
    input_size: tuple[int, int],
    extra_scales: tuple[tuple[int, int], ...] = (),
) -> dict[str, Any] | None:
    """Return the manifest if ``model_dir`` holds a complete build of this recipe, else None.

    Complete: the manifest parses, names this version, input size and extra scales, and its
    sha256 equals the sha256 of ``model.onnx``.
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
    if manifest.get("extra_scales", []) != [list(size) for size in extra_scales]:
        return None
    if manifest.get("sha256") != sha256_file(onnx_path):
        return None
    return manifest


def build(
    out: Path,
    input_size: tuple[int, int] | None = None,
    weights_cache: Path | None = None,
    force: bool = False,
    recipe: GlobalRecipe = DEFAULT_RECIPE,
) -> tuple[Path, dict[str, Any], bool]:
    """Build the global model of ``recipe`` (default: :data:`DEFAULT_RECIPE`) under ``out``
    unless already up to date; ``input_size`` None means the recipe's own.

    Returns ``(model_dir, manifest, built)`` where ``built`` is False when nothing was done.
    """
    size = recipe.input_size if input_size is None else (int(input_size[0]), int(input_size[1]))
    version = recipe.version_for(size)
    model_dir = out / "global" / version
    fresh = up_to_date(model_dir, version, size, recipe.extra_scales)
    if not force and (manifest := fresh) is not None:
        return model_dir, manifest, False
    from services.models.export import export_global_model  # imports torch: only when needed

    manifest, _ = export_global_model(
        model_dir / MODEL_FILENAME,
        model_dir / MANIFEST_FILENAME,
        recipe,
        version,
        size,
        weights_cache,
    )
    return model_dir, manifest, True


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m services.models.build", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("models"), help="models root folder")
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        choices=sorted(RECIPES),
        help=f"global model to build (repeatable; default: all of {', '.join(RECIPES)})",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="override each selected model's input size (the version gets a -HxW suffix)",
    )
    parser.add_argument("--weights-cache", type=Path, default=None, help="weights cache folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--no-local", dest="local", action="store_false", help="skip the DELF-style local model"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints a one-line summary and returns the exit code."""
    args = _parse_args(argv)
    size = None if args.input_size is None else (args.input_size[0], args.input_size[1])
    for name in args.models or list(RECIPES):
        recipe = RECIPES[name]
        t0 = time.perf_counter()
        model_dir, manifest, built = build(
            args.out, size, args.weights_cache, args.force, recipe=recipe
        )
        state = "built" if built else "up to date"
        h, w = manifest["input_size"]
        default = " (default)" if name == DEFAULT_MODEL else ""
        print(
            f"global model {manifest['version']}{default} {state}: {model_dir / MODEL_FILENAME} "
            f"sha256={manifest['sha256'][:12]} input={h}x{w} ({time.perf_counter() - t0:.2f}s)"
        )
    if not args.local:
        return 0
    t0 = time.perf_counter()
    local_dir, local, local_state = build_local(args.out, args.weights_cache)
    print(
        f"local model {local['version']} {local_state}: {local_dir / MODEL_FILENAME} "
        f"sha256={local['sha256'][:12]} ({time.perf_counter() - t0:.2f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
