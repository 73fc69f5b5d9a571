"""The torch twin of a served global model, rebuilt from its manifest (for fine-tuning, export)."""

from __future__ import annotations

from pathlib import Path

from services.common.model_registry import ModelManifest
from services.models.export import INPUT_NAME, OUTPUT_NAME, ExportError
from services.models.global_model import GlobalEmbeddingModel
from services.models.recipes import GlobalRecipe, recipe_for_manifest
from services.models.weights import ensure_weights


def check_backbone(manifest: ModelManifest) -> GlobalRecipe:
    """The recipe of ``manifest``'s backbone; raises unless this code can rebuild it in torch."""
    raw = manifest.raw
    recipe = recipe_for_manifest(raw)
    pooling = raw.get("pooling") or {}
    if recipe is None or pooling.get("type") != "gem":
        raise ExportError(
            f"backbone {manifest.version} is not an ImageNet backbone + GeM this trainer "
            "rebuilds in torch; train on a model built by `python -m services.models.build`"
        )
    if recipe.extra_scales:
        raise ExportError(
            f"backbone {manifest.version} embeds at several scales; the trainer fine-tunes "
            "single-scale backbones: train on one (e.g. mobilenetv2-gem-v1)"
        )
    if float(pooling.get("p", recipe.gem_p)) != recipe.gem_p:
        raise ExportError(
            f"backbone {manifest.version} uses GeM p={pooling.get('p')}, not {recipe.gem_p}"
        )
    if (manifest.input_name, manifest.output_name) != (INPUT_NAME, OUTPUT_NAME):
        raise ExportError(f"backbone {manifest.version} has unexpected input/output names")
    return recipe


def torch_global_model(
    manifest: ModelManifest, weights_cache: Path | None = None
) -> tuple[GlobalEmbeddingModel, float]:
    """(GlobalEmbeddingModel in eval mode, GeM p) of the backbone ``manifest`` describes."""
    recipe = check_backbone(manifest)
    weights = ensure_weights(recipe.weights, weights_cache)
    return GlobalEmbeddingModel.from_recipe(recipe, weights), recipe.gem_p
