"""Prefect tasks of a benchmark run: thin wrappers of :mod:`geo4d.benchmark` and :mod:`storage.results`.

The windows and fuse stages are the reconstruction's own tasks (:mod:`tasks.reconstruct`).
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from geo4d import benchmark
from geo4d.datasets import load_sequence
from tasks.common import STAGE_TASK_OPTIONS, open_store, report_stage


@task(name="benchmark-ingest", **STAGE_TASK_OPTIONS)
def ingest_task(dataset: str, root: str, sequence: str, store: str, size: list[int] | None = None,
                storage_options: dict | None = None) -> dict:
    seq = load_sequence(dataset, root, sequence)
    res = benchmark.ingest_stage(open_store(store, storage_options), seq, size=tuple(size) if size else None,
                                 run_id=str(flow_run.id))
    return report_stage(res)


@task(name="benchmark-ground-truth", **STAGE_TASK_OPTIONS)
def synthetic_ground_truth_task(dataset: str, root: str, sequence: str, directory: str,
                                size: list[int] | None = None) -> str:
    """Ground truth at the input size for the synthetic predictor (a test instrument)."""
    seq = load_sequence(dataset, root, sequence)
    path = benchmark.synthetic_ground_truth(seq, directory, size=tuple(size) if size else None)
    get_run_logger().info("%s/%s: synthetic predictor ground truth at %s", dataset, sequence, path)
    return str(path)


@task(name="benchmark-evaluate", **STAGE_TASK_OPTIONS)
def benchmark_evaluate_task(store: str, video_id: str, dataset: str, root: str, sequence: str,
                            depth_align: str | None = None, storage_options: dict | None = None) -> dict:
    seq = load_sequence(dataset, root, sequence)
    res = benchmark.benchmark_evaluate_stage(open_store(store, storage_options), video_id, seq,
                                             depth_protocol=benchmark.depth_protocol_for(dataset, depth_align),
                                             run_id=str(flow_run.id))
    return report_stage(res)


@task(name="benchmark-results", retries=2, retry_delay_seconds=[2, 10])
def write_results_task(rows: list[dict], metadata: dict, results_dir: str, run_name: str,
                       storage_options: dict | None = None) -> dict:
    from geo4d.metrics.benchmark import render_results_markdown
    from storage.results import write_results, write_text

    base = results_dir.rstrip("/") + "/" + run_name
    table = write_results(base + ".parquet", rows, metadata, storage_options=storage_options)
    summary = write_text(base + ".md", render_results_markdown(rows, metadata), storage_options=storage_options)
    get_run_logger().info("results: %s (summary %s)", table, summary)
    return {"table": table, "summary": summary}
