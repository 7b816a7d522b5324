"""Benchmark runs as resumable stages over a :class:`storage.store.Store` (pure; no Prefect).

A benchmark sequence goes through the reconstruction pipeline's own stages — windows → fuse
(:mod:`pipeline.stages`) — between two stages of its own (:func:`benchmark_sequence` runs all four
and returns the sequence's results row; :func:`benchmark_summary` adds the dataset mean and the
table's metadata):

* :func:`ingest_stage` replaces ``decode``: the protocol's frames (image files, squashed to the
  protocol's input size) are written as the video's ``frames`` and recorded as the ``decode``
  stage, so the windows stage and everything after it work (and resume) unchanged;
* :func:`benchmark_evaluate_stage` replaces ``evaluate``: the fused geometry is compared with the
  dataset's ground truth under the dataset's protocol (:func:`geo4d.metrics.benchmark.sequence_metrics`)
  and the metrics are recorded in the ``evaluate`` stage record.

Each returns early when its record is complete with the same fingerprint.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from pathlib import Path

import numpy as np

from geo4d.datasets import BenchmarkSequence, list_sequences, load_sequence
from geo4d.errors import Geo4DError, InputError
from geo4d.fusion import FusionConfig
from geo4d.metrics.benchmark import POSE_PROTOCOL, dataset_means, sequence_metrics
from geo4d.metrics.depth import DEPTH_PROTOCOLS, DepthProtocol
from geo4d.windows import WINDOW_SIZE, WINDOW_STRIDE
from pipeline.predictors import Geo4DPredictorSpec, PredictorSpec, SyntheticPredictorSpec
from pipeline.stages import Progress, StageResult, fuse_stage, windows_stage
from storage.results import benchmark_workdir, default_results_dir
from storage.store import STAGES, Store, VideoInfo, stage_fingerprint

__all__ = ["SYNTHETIC_LABEL", "method_label", "benchmark_sequences", "benchmark_video_id", "ingest_stage",
           "synthetic_ground_truth", "sequence_predictor", "benchmark_evaluate_stage", "depth_protocol_for",
           "benchmark_sequence", "benchmark_summary"]

SYNTHETIC_LABEL = "synthetic predictor (test instrument)"
#: The frame-rate condition of the official evaluation script, for every dataset (FACTS_eval_detail.md).
EVALUATION_FS = 24
#: Datasets whose protocol evaluates camera poses.
POSE_DATASETS = ("sintel", "bonn", "tum")


def method_label(predictor: PredictorSpec, label: str | None = None) -> str:
    """How a run's rows are labelled in tables (``label`` when given)."""
    if label:
        return str(label)
    if predictor.kind == "synthetic":
        return SYNTHETIC_LABEL
    return "Geo4D (geo4d-pipeline)"


def benchmark_sequences(dataset: str, root: str, sequences: list[str] | None = None) -> list[str]:
    """The sequences to run: ``sequences``, else all the protocol evaluates under ``root``.

    Raises:
        InputError: none found.
    """
    names = list(sequences or list_sequences(dataset, root))
    if not names:
        raise InputError(f"{root}: no {dataset} sequences found")
    return names


def benchmark_video_id(dataset: str, sequence: str) -> str:
    """``<dataset>-<sequence>`` with characters outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{dataset}-{sequence}")[:128]


def depth_protocol_for(dataset: str, depth_align: str | None = None) -> DepthProtocol | None:
    """The dataset's depth protocol (None for pose-only datasets), optionally with another alignment."""
    proto = DEPTH_PROTOCOLS.get(dataset)
    if proto is not None and depth_align is not None:
        proto = proto.with_align(depth_align)
    return proto


def ingest_stage(store: Store, seq: BenchmarkSequence, *, video_id: str | None = None,
                 size: tuple[int, int] | None = None, run_id: str | None = None) -> StageResult:
    """Store the sequence's frames at ``size = (W, H)`` (default the protocol's input size) as the
    video's ``decode`` stage. Every frame file is read (and checked) before the store is touched."""
    vid = video_id or benchmark_video_id(seq.dataset, seq.name)
    W, H = size or seq.eval_size
    files = [str(p) for p in seq.frame_paths]
    params = {"benchmark": seq.dataset, "sequence": seq.name, "source": str(seq.source),
              "frames": files, "size_wh": [int(W), int(H)],
              "mtimes": [Path(f).stat().st_mtime_ns for f in files]}
    fp = stage_fingerprint(params)
    if store.has_video(vid) and store.is_complete(vid, "decode", fp):
        return StageResult(vid, "decode", True, fp, details={"n_frames": seq.n_frames})
    t0 = time.perf_counter()
    frames = seq.read_frames(size=(W, H))
    T = len(frames)
    if store.has_video(vid):
        old = store.video_info(vid)
        if (old.n_frames, old.height, old.width) != (T, H, W):
            store.delete_video(vid)
    store.ensure_video(VideoInfo(vid, str(seq.source), T, int(H), int(W), 0.0))
    store.clear_stages(vid, list(STAGES))
    store.frames_array(vid, create=True)[:] = frames
    dt = time.perf_counter() - t0
    store.record_stage(vid, "decode", "complete", parameters=params, run_id=run_id, seconds=dt,
                       extra={"benchmark": seq.dataset, "sequence": seq.name})
    return StageResult(vid, "decode", False, fp, dt, {"n_frames": T, "height": int(H), "width": int(W)})


def synthetic_ground_truth(seq: BenchmarkSequence, directory: str | Path, size: tuple[int, int] | None = None) -> Path:
    """Write the sequence's ground truth at the input size as a ``.gt`` directory (for the synthetic
    predictor, a test instrument); kept when already written for the same source and size."""
    from storage.ground_truth import write_ground_truth

    d = Path(directory)
    W, H = size or seq.eval_size
    tag = {"source": str(seq.source), "size_wh": [int(W), int(H)], "n_frames": seq.n_frames}
    meta = d / "meta.json"
    if meta.is_file():
        try:
            if json.loads(meta.read_text()).get("benchmark_source") == tag:
                return d
        except (OSError, ValueError):
            pass
    truth = seq.synthetic_truth(size=(W, H))
    truth.meta = {**truth.meta, "benchmark_source": tag}
    return write_ground_truth(d, truth)


def sequence_predictor(predictor: PredictorSpec, seq: BenchmarkSequence, store_location: str,
                       size: tuple[int, int] | None = None) -> PredictorSpec:
    """The predictor spec for one sequence: the synthetic instrument gets the sequence's ground truth
    at the input size (written under :func:`storage.results.benchmark_workdir`) unless the spec names
    one; the network runs at the input ``size = (W, H)`` (default the protocol's) unless the spec
    sets its own ``image_size``, and at the evaluation script's ``fs`` = 24 unless the spec sets one."""
    if isinstance(predictor, SyntheticPredictorSpec) and not predictor.ground_truth:
        gt_dir = benchmark_workdir(store_location, seq.dataset) / f"{benchmark_video_id(seq.dataset, seq.name)}.gt"
        return predictor.model_copy(update={"ground_truth": str(synthetic_ground_truth(seq, gt_dir, size=size))})
    if isinstance(predictor, Geo4DPredictorSpec):
        update = {} if predictor.fs is not None else {"fs": EVALUATION_FS}
        if predictor.image_size is None:
            W, H = size or seq.eval_size
            update["image_size"] = (H, W)
        return predictor.model_copy(update=update)
    return predictor


def benchmark_evaluate_stage(store: Store, video_id: str, seq: BenchmarkSequence, *,
                             depth_protocol: DepthProtocol | None = None, run_id: str | None = None) -> StageResult:
    """Evaluate the fused reconstruction of ``seq`` under its dataset's protocol; the metrics go into
    the ``evaluate`` stage record (``details["metrics"]``)."""
    rec = store.stage_record(video_id, "fuse") if store.has_video(video_id) else None
    if not rec or rec.get("status") != "complete":
        raise InputError(f"video {video_id}: stage 'fuse' is not complete; run it first")
    proto = depth_protocol if depth_protocol is not None else DEPTH_PROTOCOLS.get(seq.dataset)
    params = {"benchmark": seq.dataset, "sequence": seq.name, "source": str(seq.source),
              "depth_protocol": proto.parameters() if (proto and seq.depth_eval) else None,
              "pose_protocol": POSE_PROTOCOL if seq.pose_eval else None, "upstream": rec.get("fingerprint"),
              "gt_mtimes": [Path(p).stat().st_mtime_ns for p in (seq.depth_paths or [])]}
    fp = stage_fingerprint(params)
    if store.is_complete(video_id, "evaluate", fp):
        old = store.stage_record(video_id, "evaluate") or {}
        return StageResult(video_id, "evaluate", True, fp, details={"metrics": old.get("metrics")})
    t0 = time.perf_counter()
    fused = store.read_fused(video_id)
    gt_depth = None
    if seq.depth_eval and proto is not None:
        gt_depth, _ = seq.read_depth()
        if len(gt_depth) != fused.n_frames:
            raise InputError(f"{seq.source}: {len(gt_depth)} depth maps, reconstruction has {fused.n_frames} frames")
    metrics = sequence_metrics(
        seq.dataset, fused.depth, fused.confidence, fused.world_from_cam, fused.intrinsics,
        gt_depth=gt_depth, gt_world_from_cam=seq.world_from_cam if seq.pose_eval else None,
        gt_intrinsics=seq.intrinsics, depth_protocol=proto,
        evaluate_depth=seq.depth_eval and proto is not None, evaluate_poses=seq.pose_eval,
    )
    metrics = {k: (bool(v) if isinstance(v, bool | np.bool_) else (float(v) if np.isfinite(v) else None))
               for k, v in metrics.items()}
    dt = time.perf_counter() - t0
    store.record_stage(video_id, "evaluate", "complete", parameters=params, run_id=run_id, seconds=dt,
                       extra={"metrics": metrics})
    return StageResult(video_id, "evaluate", False, fp, dt, {"metrics": metrics})


def benchmark_sequence(store: Store, dataset: str, root: str, name: str, predictor: PredictorSpec, *,
                       label: str | None = None, input_size: list[int] | None = None, depth_align: str | None = None,
                       fusion: FusionConfig | dict | None = None, window_size: int = WINDOW_SIZE, window_stride: int = WINDOW_STRIDE,
                       run_id: str | None = None, progress: Progress | None = None,
                       fuse_progress: Progress | None = None) -> dict:
    """Run (or resume) one sequence: ingest → windows → fuse → evaluate; its results row.

    A permanent fault (any :class:`geo4d.errors.Geo4DError`: an unreadable ground-truth file, invalid
    predictions …) is recorded in the row's ``error`` with its reason, not raised, so the other
    sequences go on; other exceptions propagate (transient ones are retried by the task).
    """
    row: dict = {"row": "sequence", "dataset": dataset, "sequence": name, "method": method_label(predictor, label)}
    size = tuple(input_size) if input_size else None
    try:
        seq = load_sequence(dataset, root, name)
        row["n_frames"] = seq.n_frames
        vid = ingest_stage(store, seq, size=size, run_id=run_id).video_id
        spec = sequence_predictor(predictor, seq, store.location, size=size)
        windows_stage(store, vid, spec, window_size=window_size, stride=window_stride, run_id=run_id,
                      progress=progress)
        fused = fuse_stage(store, vid, fusion=fusion, run_id=run_id, progress=fuse_progress)
        ev = benchmark_evaluate_stage(store, vid, seq, depth_protocol=depth_protocol_for(dataset, depth_align),
                                      run_id=run_id)
    except Geo4DError as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row.update(ev.details["metrics"] or {})
    row["seconds"] = float(fused.seconds) + float(ev.seconds)
    return row


def benchmark_summary(dataset: str, rows: list[dict], predictor: PredictorSpec, *, label: str | None = None,
                      root: str, store: str,
                      results_dir: str | None = None, run_name: str | None = None,
                      depth_align: str | None = None, input_size: list[int] | None = None,
                      run_id: str | None = None) -> dict:
    """The run's table: the sequence ``rows`` plus their mean row (over the rows without an error),
    its metadata (protocols, predictor, failures …), where it goes and under which name.

    Returns:
        ``{"rows", "mean", "failed", "metadata", "results_dir", "run_name"}``; the run name defaults
        to ``<dataset>-<predictor kind>-<UTC time>``, the directory to ``<store>.results``.
    """
    label = method_label(predictor, label)
    ok = [r for r in rows if not r.get("error")]
    mean = {"row": "mean", "dataset": dataset, "sequence": "mean", "method": label, **dataset_means(ok)}
    failed = [r["sequence"] for r in rows if r.get("error")]
    depth_proto = depth_protocol_for(dataset, depth_align)
    metadata = {
        "dataset": dataset,
        "root": str(root),
        "store": str(store),
        "method": label,
        "synthetic": predictor.kind == "synthetic",
        "predictor": predictor.fingerprint_dict(),
        "protocol": {"depth": depth_proto.parameters() if depth_proto else None,
                     "pose": POSE_PROTOCOL if dataset in POSE_DATASETS else None,
                     "depth_mean": "pixel-weighted (valid_pixels)", "pose_mean": "per-sequence mean"},
        "sequences": [r["sequence"] for r in rows],
        "input_size": list(input_size) if input_size else "protocol",
        "failed": failed,
        "run_id": str(run_id),
    }
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kind = predictor.kind
    return {"rows": [*rows, mean], "mean": mean, "failed": failed, "metadata": metadata,
            "results_dir": results_dir or default_results_dir(store), "run_name": run_name or f"{dataset}-{kind}-{stamp}"}
