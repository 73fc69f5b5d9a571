"""bench/render_quality.py: docs/quality.md tables come from the eval reports."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "render_quality.py"


def _module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("render_quality", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _run(mode: str, map_: float, ns_applies: bool) -> dict:
    return {
        "queries": "plain", "mode": mode, "model": "mnv2-gem", "map": map_, "p_at_1": 0.5,
        "recall_at": {"1": 0.5, "10": 0.2}, "ns_score": 3.25, "ns_applies": ns_applies,
        "query_count": 400, "latency_ms": {"p50": 123.4, "p95": 456.0},
    }  # fmt: skip


def _report(dataset: str, protocol: str, runs: list[dict]) -> dict:
    return {
        "dataset": f"../shared/datasets/{dataset}", "protocol": protocol, "images": 100,
        "k": 100, "client_workers": 4, "machine": {"cpus": 2}, "note": "",
        "load_average_before": [1.0], "load_average_after": [2.0], "runs": runs,
    }  # fmt: skip


def test_one_table_per_measured_set_and_commands_for_the_rest(tmp_path):
    render_quality = _module()
    smvs = _report(
        "smvs_dvd_covers", "smvs", [_run("none", 0.31234, False), _run("geometric", 0.99, False)]
    )
    uk = _report("ukbench1000", "ukbench", [_run("none", 0.9, True)])
    (tmp_path / "a.json").write_text(json.dumps(smvs))
    (tmp_path / "b.json").write_text(json.dumps(uk))
    text = render_quality.render(render_quality.load_reports(tmp_path))
    smvs_part = text.split("## smvs_dvd_covers, standard")[1].split("## ")[0]
    assert "| `mnv2-gem` | none | 0.312 | 0.500 | 0.200 | 123 | 456 | 400 | `a.json` |" in smvs_part
    assert "N-S" not in smvs_part  # one relevant per query: N-S does not apply
    uk_part = text.split("## ukbench1000, plain")[1].split("## ")[0]
    assert "| N-S |" in uk_part and "| 3.250 |" in uk_part
    paris_part = text.split("## paris6k_subset, official queries")[1].split("## ")[0]
    assert "Not measured yet" in paris_part and "--protocol paris " in paris_part
