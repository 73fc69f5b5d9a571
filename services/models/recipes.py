"""Recipes of the global models: architecture, weights, input size and normalisation.

Light to import (no torch): ``services.models.build`` reads them for its up-to-date check.
Every recipe builds ``<out>/global/<version>/`` with its own manifest; a recipe's version must
change whenever anything that changes its embeddings changes (vectors of different versions
are never mixed in one index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.models.weights import EFFICIENTNET_LITE2, MOBILENET_V2, WeightsSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 0.5) / 0.5 (x in [0,1]); on the hidden product set it
# beat the ImageNet mean/std by 5 mAP points (issue 11).
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)
GEM_P = 3.0
ARCH_MOBILENET_V2 = "mobilenet_v2"
ARCH_EFFICIENTNET_LITE2 = "efficientnet_lite2"


@dataclass(frozen=True)
class GlobalRecipe:
    """How one global model is built: backbone + GeM(p) + L2, served at ``input_size``."""

    name: str  # manifest "name": architecture + pooling, e.g. "mobilenetv2-gem"
    base_version: str  # version at the default input size, e.g. "mobilenetv2-gem-v1"
    architecture: str  # key of services.models.global_model.ARCHITECTURES
    weights: WeightsSpec
    input_size: tuple[int, int]  # default (H, W); the embedder stretches images to it
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    gem_p: float = GEM_P
    output_dims: int = 1280
    # Multi-scale: smaller (H, W) sizes embedded beside input_size (the largest); the
    # embedding is the L2-normalised sum of the per-size embeddings. () = one scale.
    extra_scales: tuple[tuple[int, int], ...] = ()

    def version_for(self, input_size: tuple[int, int] | None = None) -> str:
        """The base version at the default size, else suffixed with ``-HxW``."""
        if input_size is None or tuple(input_size) == self.input_size:
            return self.base_version
        return f"{self.base_version}-{input_size[0]}x{input_size[1]}"


MOBILENETV2_GEM = GlobalRecipe(
    name="mobilenetv2-gem",
    base_version="mobilenetv2-gem-v1",
    architecture=ARCH_MOBILENET_V2,
    weights=MOBILENET_V2,
    # Chosen by bench/global_model_input_size.py (bench/results/global_model_input_size.json):
    # UKBench-1000 N-S 3.959 at 288 vs 3.935 at 224 and 3.962 at 448, for ~41% of 448's compute.
    input_size=(288, 288),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
EFFICIENTNET_LITE2_GEM = GlobalRecipe(
    name="efficientnet-lite2-gem",
    base_version="efficientnet-lite2-gem-v1",
    architecture=ARCH_EFFICIENTNET_LITE2,
    weights=EFFICIENTNET_LITE2,
    # Chosen by bench/global_backbones.py (bench/results/global_backbones.json), 288/352/416:
    # SMVS P@1 0.165/0.182/0.160, UKBench-200 transformed N-S 3.785/3.810/3.790, Paris mAP
    # 0.909/0.891/0.873, batch-16 CPU 44/58/84 ms per image; 352 is also the short side the
    # issue measured on the hidden sets.
    input_size=(352, 352),
    mean=HALF_MEAN,
    std=HALF_STD,
)
MOBILENETV2_GEM_MULTISCALE = GlobalRecipe(
    name="mobilenetv2-gem-ms",
    base_version="mobilenetv2-gem-ms-v1",
    architecture=ARCH_MOBILENET_V2,
    weights=MOBILENET_V2,
    # The default's 288 between 1/sqrt(2) and sqrt(2) of it (the usual multi-scale
    # descriptor's ratios); measured against the single-scale models by
    # bench/global_backbones.py (bench/results/global_backbones.json).
    input_size=(408, 408),
    extra_scales=((288, 288), (204, 204)),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
RECIPES: dict[str, GlobalRecipe] = {
    r.name: r for r in (MOBILENETV2_GEM, EFFICIENTNET_LITE2_GEM, MOBILENETV2_GEM_MULTISCALE)
}


def recipe_for_manifest(manifest: dict[str, Any]) -> GlobalRecipe | None:
    """The recipe a built manifest came from (matched by weights sha256 and architecture).

    Lets a trainer rebuild the torch model of a served backbone; None for anything else
    (e.g. a trained model with a head). Manifests written before ``architecture`` existed
    are MobileNetV2.
    """
    architecture = manifest.get("architecture", ARCH_MOBILENET_V2)
    for recipe in RECIPES.values():
        if (
            recipe.weights.sha256 == manifest.get("weights_sha256")
            and recipe.architecture == architecture
            and manifest.get("name", recipe.name) == recipe.name
        ):
            return recipe
    return None
