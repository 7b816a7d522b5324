"""Benchmark evaluation: every sequence of a benchmark through the reconstruction stages, then the
protocol's metrics, one Parquet results table and a Markdown summary per run.

Resumable like a reconstruction: each sequence is a video of the store (``<dataset>-<sequence>``)
whose finished stages are skipped on a rerun.
"""

from __future__ import annotations

from prefect import flow

from geo4d.fusion import FusionConfig
from geo4d.windows import WINDOW_SIZE, WINDOW_STRIDE
from pipeline.predictors import PredictorSpec, parse_predictor_spec
from tasks.evaluate import sequence_task, sequences_task, summary_task, write_results_task


@flow(name="evaluate-benchmark", log_prints=True)
def evaluate_benchmark(
    dataset: str,
    root: str,
    store: str,
    predictor: PredictorSpec | None = None,
    label: str | None = None,
    sequences: list[str] | None = None,
    results_dir: str | None = None,
    run_name: str | None = None,
    depth_align: str | None = None,
    fusion: FusionConfig | None = None,
    window_size: int = WINDOW_SIZE,
    window_stride: int = WINDOW_STRIDE,
    input_size: list[int] | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Evaluate ``predictor`` on the ``dataset`` benchmark found under ``root``.

    A sequence that fails permanently is recorded in its row with the reason (and in ``failed``);
    the others go on.

    Args:
        dataset: ``sintel``, ``bonn``, ``kitti`` or ``tum``.
        root: the benchmark's directory in its native (or prepared) layout (docs/evaluation.md).
        store: reconstruction store (each sequence becomes video ``<dataset>-<sequence>``).
        predictor: a predictor spec (:mod:`pipeline.predictors`; a mapping is validated into one);
            default the synthetic test instrument, fed with the benchmark's own ground truth. A geo4d
            spec without ``image_size`` runs at the protocol's input size.
        label: the method's name in the tables (default from the predictor's kind).
        sequences: subset of sequences (default: all the protocol evaluates).
        results_dir: where the table goes (default ``<store>.results``).
        depth_align: override the protocol's depth alignment (e.g. ``"scale_shift_l1"``, the exact fit).
        input_size: ``[W, H]`` to feed the predictor instead of the protocol's size (a deviation from
            the protocol, recorded in the table's metadata; for quick checks and tests).

    Returns:
        ``{"rows": [...], "mean": {...}, "table": path, "summary": path, "failed": [...], "run_name": str}``.
    """
    predictor = parse_predictor_spec(predictor)
    names = sequences_task(dataset, root, sequences)
    rows = [sequence_task(dataset, root, name, store, predictor, label=label, input_size=input_size, depth_align=depth_align,
                          fusion=fusion, window_size=window_size, window_stride=window_stride,
                          storage_options=storage_options)
            for name in names]
    summary = summary_task(dataset, rows, predictor, label, root, store, results_dir=results_dir, run_name=run_name,
                           depth_align=depth_align, input_size=input_size)
    paths = write_results_task(summary, storage_options=storage_options)
    return {"rows": summary["rows"], "mean": summary["mean"], "failed": summary["failed"],
            "run_name": summary["run_name"], **paths}
