"""bench/e2e_100k.py: the bulk-load plan routes like the gateway and trains ScaNN once."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from services.common.sharding import shard_of

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_each_shard_crosses_the_exact_threshold_only_in_its_last_upserts(shards):
    bench = _module("e2e_100k")
    real = [f"real-{i}" for i in range(37)]
    ids, placement, final, threshold = bench.plan_load(real, 6000, shards, tail=300)
    assert len(ids) == len(set(ids)) == 6000 - len(real)
    assert placement == [shard_of(i, shards) for i in ids]
    assert sum(final) == 6000
    assert threshold == min(final)
    seen = Counter(shard_of(i, shards) for i in real)
    remaining = Counter(placement)
    for shard in placement:
        seen[shard] += 1
        remaining[shard] -= 1
        if seen[shard] >= threshold:  # crossed: only tail rows of that shard are left
            assert remaining[shard] < 300


def test_synthetic_vectors_are_unit_variants_of_the_real_ones():
    bench = _module("e2e_100k")
    rng = np.random.default_rng(0)
    real = rng.standard_normal((5, 64)).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    args = argparse.Namespace(seed=1, noise_min=0.4, noise_max=0.6, random_fraction=0.0)
    vectors, base = bench.synthetic_vectors(real, np.arange(100, 400), args)
    assert vectors.shape == (300, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = np.einsum("nd,nd->n", vectors, real[base])
    assert similarity.min() > 0.7  # noise 0.4-0.6: cosine ~ 1 / sqrt(1 + s^2) ~ 0.86
    assert similarity.max() < 0.99
    again, _ = bench.synthetic_vectors(real, np.arange(100, 400), args)
    np.testing.assert_array_equal(vectors, again)


def test_the_report_has_one_row_per_shard_count_and_cell():
    report_module = _module("e2e_100k_report")
    cell = {
        "mode": "none", "clients": 1, "queries": 10, "p50_ms": 50.0, "p99_ms": 90.0,
        "queries_per_s": 20.0, "gateway_stage_ms_p50": {"embed": 40.0, "local": 0.0},
        "errors": {}, "partial": 0, "rerank_degraded": 0,
    }  # fmt: skip
    run = {
        "load": {"gallery_images": 1000}, "command": "bench/e2e_100k.py --shards 2",
        "baseline": {"target_ms": 60.0, "none_interleaved_p50_over_target": 0.9},
        "cells": [cell, {**cell, "clients": 8}],
    }  # fmt: skip
    text = "\n".join(
        report_module.e2e_100k_section(
            {"machine": {"cpus": 2}, "by_shards": {"2": run, "1": run}, "tls": True}
        )
    )
    assert "| 1 | 1000 |" in text and "| 2 | 1000 |" in text
    assert text.count("| none |") == 4
    assert "**0.9**" in text and "embed 40" in text and "local 0" not in text
