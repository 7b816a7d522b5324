"""Prefect tasks of a benchmark run: thin wrappers of :mod:`pipeline.benchmark` and :mod:`storage.results`.

One coarse task per sequence (all its stages, like an archive run's per-video task): a permanent
fault is recorded in the sequence's row with its reason and the other sequences go on; transient
faults are retried (the stages resume).
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from geo4d.windows import WINDOW_SIZE, WINDOW_STRIDE
from geo4d.fusion import FusionConfig
from pipeline import benchmark
from pipeline.predictors import PredictorSpec
from tasks.common import STAGE_TASK_OPTIONS, open_store, progress_logger


@task(name="benchmark-sequences", **STAGE_TASK_OPTIONS)
def sequences_task(dataset: str, root: str, sequences: list[str] | None = None) -> list[str]:
    return benchmark.benchmark_sequences(dataset, root, sequences)


@task(name="benchmark-sequence", **STAGE_TASK_OPTIONS)
def sequence_task(dataset: str, root: str, sequence: str, store: str, predictor: PredictorSpec,
                  label: str | None = None, input_size: list[int] | None = None, depth_align: str | None = None,
                  fusion: FusionConfig | None = None,
                  window_size: int = WINDOW_SIZE, window_stride: int = WINDOW_STRIDE,
                  storage_options: dict | None = None) -> dict:
    """One sequence through ingest → windows → fuse → evaluate; its results row (``error`` on failure)."""
    logger = get_run_logger()
    row = benchmark.benchmark_sequence(
        open_store(store, storage_options), dataset, root, sequence, predictor, label=label, input_size=input_size,
        depth_align=depth_align, fusion=fusion, window_size=window_size, window_stride=window_stride,
        run_id=str(flow_run.id), progress=progress_logger(logger, stage="windows"),
        fuse_progress=progress_logger(logger, every=5, stage="fuse"))
    if row.get("error"):
        logger.error("%s/%s failed: %s", dataset, sequence, row["error"])
    return row


@task(name="benchmark-summary")
def summary_task(dataset: str, rows: list[dict], predictor: PredictorSpec, label: str | None, root: str, store: str,
                 results_dir: str | None = None, run_name: str | None = None, depth_align: str | None = None,
                 input_size: list[int] | None = None) -> dict:
    return benchmark.benchmark_summary(dataset, rows, predictor, label=label, root=root, store=store, results_dir=results_dir,
                                       run_name=run_name, depth_align=depth_align, input_size=input_size,
                                       run_id=str(flow_run.id))


@task(name="benchmark-results", retries=2, retry_delay_seconds=[2, 10])
def write_results_task(summary: dict, storage_options: dict | None = None) -> dict:
    """Write ``summary``'s table (Parquet) and Markdown summary as ``<results_dir>/<run_name>.*``."""
    from geo4d.metrics.benchmark import render_results_markdown
    from storage.results import write_results, write_text

    rows, metadata = summary["rows"], summary["metadata"]
    base = summary["results_dir"].rstrip("/") + "/" + summary["run_name"]
    table = write_results(base + ".parquet", rows, metadata, storage_options=storage_options)
    text = write_text(base + ".md", render_results_markdown(rows, metadata), storage_options=storage_options)
    get_run_logger().info("results: %s (summary %s)", table, text)
    return {"table": table, "summary": text}
