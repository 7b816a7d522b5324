"""Benchmark evaluation: every sequence of a benchmark through the reconstruction stages, then the
protocol's metrics, one Parquet results table and a Markdown summary per run.

Resumable like a reconstruction: each sequence is a video of the store (``<dataset>-<sequence>``)
whose finished stages are skipped on a rerun.
"""

from __future__ import annotations

import datetime as _dt
import re

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.evaluate import benchmark_evaluate_task, ingest_task, synthetic_ground_truth_task, write_results_task
from tasks.reconstruct import fuse_task, windows_task

SYNTHETIC_LABEL = "synthetic predictor (test instrument)"


def method_label(predictor: dict) -> str:
    """How a run's rows are labelled in tables."""
    if predictor.get("label"):
        return str(predictor["label"])
    if predictor.get("kind") == "synthetic":
        return SYNTHETIC_LABEL
    return "Geo4D (geo4d-pipeline)"


@flow(name="evaluate-benchmark", log_prints=True)
def evaluate_benchmark(
    dataset: str,
    root: str,
    store: str,
    predictor: dict | None = None,
    sequences: list[str] | None = None,
    results_dir: str | None = None,
    run_name: str | None = None,
    depth_align: str | None = None,
    fusion: dict | None = None,
    window_size: int = 16,
    window_stride: int = 4,
    input_size: list[int] | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Evaluate ``predictor`` on the ``dataset`` benchmark found under ``root``.

    Args:
        dataset: ``sintel``, ``bonn``, ``kitti`` or ``tum``.
        root: the benchmark's directory in its native (or prepared) layout (docs/evaluation.md).
        store: reconstruction store (each sequence becomes video ``<dataset>-<sequence>``).
        predictor: a predictor spec (:func:`geo4d.predictor.predictor_from_spec`); default the
            synthetic test instrument, fed with the benchmark's own ground truth.
        sequences: subset of sequences (default: all the protocol evaluates).
        results_dir: where the table goes (default ``<store>.results``).
        depth_align: override the protocol's depth alignment (e.g. ``"scale_shift_l1"``, the exact fit).
        input_size: ``[W, H]`` to feed the predictor instead of the protocol's size (a deviation from
            the protocol, recorded in the table's metadata; for quick checks and tests).

    Returns:
        ``{"rows": [...], "mean": {...}, "table": path, "summary": path, "failed": [...]}``.
    """
    from geo4d.benchmark import benchmark_video_id, depth_protocol_for
    from geo4d.datasets import list_sequences, load_sequence
    from geo4d.metrics.benchmark import POSE_PROTOCOL, dataset_means
    from storage.results import benchmark_workdir, default_results_dir

    logger = get_run_logger()
    predictor = dict(predictor or {"kind": "synthetic"})
    names = list(sequences or list_sequences(dataset, root))
    if not names:
        from geo4d.errors import InputError

        raise InputError(f"{root}: no {dataset} sequences found")
    label = method_label(predictor)
    rows: list[dict] = []
    failed: list[str] = []
    for name in names:
        row: dict = {"row": "sequence", "dataset": dataset, "sequence": name, "method": label}
        try:
            seq = load_sequence(dataset, root, name)
            row["n_frames"] = seq.n_frames
            ingest = ingest_task(dataset, root, name, store, size=input_size, storage_options=storage_options)
            vid = ingest["video_id"]
            spec = dict(predictor)
            spec.pop("label", None)
            if spec.get("kind") == "synthetic" and not spec.get("ground_truth"):
                gt_dir = benchmark_workdir(store, dataset) / f"{benchmark_video_id(dataset, name)}.gt"
                spec["ground_truth"] = synthetic_ground_truth_task(dataset, root, name, str(gt_dir), size=input_size)
            elif spec.get("kind") == "geo4d":
                W, H = input_size or seq.eval_size
                spec.setdefault("image_size", [H, W])
            windows_task(store, vid, spec, window_size=window_size, stride=window_stride,
                         storage_options=storage_options)
            fused = fuse_task(store, vid, fusion=fusion, storage_options=storage_options)
            ev = benchmark_evaluate_task(store, vid, dataset, root, name, depth_align=depth_align,
                                         storage_options=storage_options)
            row.update(ev["details"]["metrics"] or {})
            row["seconds"] = float(fused.get("seconds", 0.0)) + float(ev.get("seconds", 0.0))
        except Exception as exc:  # one failed sequence does not stop the benchmark
            logger.error("%s/%s failed: %s", dataset, name, exc)
            row["error"] = f"{type(exc).__name__}: {exc}"
            failed.append(name)
        rows.append(row)
    mean = {"row": "mean", "dataset": dataset, "sequence": "mean", "method": label,
            **dataset_means([r for r in rows if not r.get("error")])}
    rows.append(mean)
    depth_proto = depth_protocol_for(dataset, depth_align)
    metadata = {
        "dataset": dataset,
        "root": str(root),
        "store": str(store),
        "method": label,
        "synthetic": predictor.get("kind") == "synthetic",
        "predictor": {k: v for k, v in predictor.items() if k != "label"},
        "protocol": {"depth": depth_proto.parameters() if depth_proto else None,
                     "pose": POSE_PROTOCOL if dataset in ("sintel", "bonn", "tum") else None,
                     "depth_mean": "pixel-weighted (valid_pixels)", "pose_mean": "per-sequence mean"},
        "sequences": names,
        "input_size": list(input_size) if input_size else "protocol",
        "failed": failed,
        "run_id": str(flow_run.id),
    }
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kind = re.sub(r"[^A-Za-z0-9._-]", "_", str(predictor.get("kind", "predictor")))
    run = run_name or f"{dataset}-{kind}-{stamp}"
    paths = write_results_task(rows, metadata, results_dir or default_results_dir(store), run,
                               storage_options=storage_options)
    return {"rows": rows, "mean": mean, "failed": failed, "run_name": run, **paths}
