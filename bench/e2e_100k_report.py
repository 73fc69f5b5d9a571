"""docs/benchmarks.md section for bench/results/e2e_100k.json (bench/e2e_100k.py)."""

from __future__ import annotations


def _ms(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "–"


def _load(run: dict) -> str:
    start, end = run.get("load_average_start"), run.get("load_average_end")
    return f"{start[0]} / {end[0]}" if start and end else "–"


def e2e_100k_section(report: dict) -> list[str]:
    """The load, baseline and latency-grid tables, one row per shard count / cell."""
    by_shards = report.get("by_shards", {})
    lines = [
        "## End to end at 100k images: 1/2/4 shards x 1/8/32 clients (`bench/e2e_100k.py`)",
        "",
        f"One local stack per shard count ({report['machine']['cpus']} cores, TLS "
        f"{'on' if report.get('tls') else 'off'}, API keys on, model "
        f"`{report.get('model_version')}`). Gallery: {report.get('real_images')} real "
        f"ukbench images ingested through the gateway (embedding, local features in S3, "
        "metadata), the rest synthetic near-duplicates / noise of their served embeddings, "
        "each loaded with `Indexer/Upsert` on its `shard_of` shard plus "
        "`RedisMetadataStore.put_images` (one transaction per batch) and carrying a real "
        "image's sha256, so `geometric` verifies real local features. Every shard trains "
        "ScaNN once and the bench waits for it before measuring. Baseline, per stack, "
        "interleaved query by query with a 1-client gateway search of the same image: raw "
        "embedding = in-process ONNX Runtime decode + resize + model; index = `Indexer/Search` "
        "of the same vector on every shard in parallel, from the bench. Target: p50(none, 1 "
        "client) <= 1.2 x (embed p50 + index p50) + 5 ms. Other work shared the 2 cores "
        "(load averages in the JSON), so latencies are pessimistic and noisy. Grid p50/p99 "
        "are client-side over the answered searches; errors are refused searches (not "
        "timed; `ResourceExhaustedError` = load shedding at the services' in-flight limits); "
        "degraded = the re-rank was skipped (verifier shed or too slow) and the hits came "
        "back in global order. With few queries per cell, p99 is close to the maximum.",
        "",
        "| shards | gallery | real ingest img/s | bulk load vec/s | ScaNN wait s | embed p50 ms "
        "| index p50 ms | target ms | none p50 interleaved ms | ratio to target "
        "| grid none 1-client p50 / target | 1-min load avg start / end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shards, run in sorted(by_shards.items(), key=lambda kv: int(kv[0])):
        load, base = run.get("load", {}), run.get("baseline", {})
        lines.append(
            f"| {shards} | {load.get('gallery_images')} | {run.get('real_ingest_images_per_s')} "
            f"| {load.get('vectors_per_s')} | {load.get('scann_wait_s')} "
            f"| {base.get('embed_ms_p50')} | {base.get('index_ms_p50')} "
            f"| {base.get('target_ms')} | {base.get('none_interleaved_ms_p50')} "
            f"| **{base.get('none_interleaved_p50_over_target')}** "
            f"| {run.get('none_1_client_p50_over_target', '–')} "
            f"| {_load(run)} |"
        )
    lines += [
        "",
        "| shards | mode | clients | queries | p50 ms | p99 ms | searches/s "
        "| gateway stages p50 ms | errors / partial / degraded |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shards, run in sorted(by_shards.items(), key=lambda kv: int(kv[0])):
        for cell in run.get("cells", []):
            stages = ", ".join(
                f"{name} {_ms(ms)}"
                for name, ms in cell.get("gateway_stage_ms_p50", {}).items()
                if ms
            )
            errors = ", ".join(f"{n} {name}" for name, n in cell.get("errors", {}).items())
            lines.append(
                f"| {shards} | {cell['mode']} | {cell['clients']} | {cell['queries']} "
                f"| {_ms(cell['p50_ms'])} | {_ms(cell['p99_ms'])} | {cell['queries_per_s']} "
                f"| {stages} | {errors or 0} / {cell['partial']} / {cell['rerank_degraded']} |"
            )
    commands = sorted({run.get("command", "") for run in by_shards.values()})
    lines += ["", "Command(s), each under `flock /tmp/visearch-heavy.lock`:", ""]
    lines += [f"    .venv/bin/python {command}" for command in commands if command]
    lines += [""]
    return lines
