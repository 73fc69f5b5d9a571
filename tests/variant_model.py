"""A second global-model version for tests: a tiny ONNX graph with a registry manifest.

input float32 [n, 3, 64, 64] -> 8x8 average pooling -> [n, 192] -> fixed random projection
[192, dims] -> L2 normalisation -> float32 [n, dims]. Different weights (seed) or dims make a
different version; it embeds in microseconds, so tests can count and compare its outputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

INPUT_SIZE = 64


def build_variant(out_root: Path, version: str, dims: int = 64, seed: int = 0) -> Path:
    """Writes out_root/global/<version>/{model.onnx, manifest.json}; returns that folder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((3 * 8 * 8, dims)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", ["images"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]
            ),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["projected"]),
            helper.make_node("LpNormalization", ["projected"], ["embeddings"], axis=1, p=2),
        ],
        "variant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 64, 64])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", dims])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = out_root / "global" / version
    folder.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    manifest = {
        "name": "test-variant",
        "version": version,
        "kind": "global",
        "sha256": hashlib.sha256(data).hexdigest(),
        "input_name": "images",
        "output_name": "embeddings",
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "output_dims": dims,
        "parent_version": None,
        "created_by": "tests.variant_model",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return folder
