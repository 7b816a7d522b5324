"""Benchmark runs as resumable stages over a :class:`storage.store.Store` (pure; no Prefect).

A benchmark sequence goes through the reconstruction pipeline's own stages — windows → fuse
(:mod:`geo4d.stages`) — between two stages of its own:

* :func:`ingest_stage` replaces ``decode``: the protocol's frames (image files, squashed to the
  protocol's input size) are written as the video's ``frames`` and recorded as the ``decode``
  stage, so the windows stage and everything after it work (and resume) unchanged;
* :func:`benchmark_evaluate_stage` replaces ``evaluate``: the fused geometry is compared with the
  dataset's ground truth under the dataset's protocol (:func:`geo4d.metrics.benchmark.sequence_metrics`)
  and the metrics are recorded in the ``evaluate`` stage record.

Each returns early when its record is complete with the same fingerprint.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from geo4d.datasets import BenchmarkSequence
from geo4d.errors import InputError
from geo4d.metrics.benchmark import POSE_PROTOCOL, sequence_metrics
from geo4d.metrics.depth import DEPTH_PROTOCOLS, DepthProtocol
from geo4d.stages import StageResult
from storage.store import STAGES, Store, VideoInfo, stage_fingerprint

__all__ = ["benchmark_video_id", "ingest_stage", "synthetic_ground_truth", "benchmark_evaluate_stage",
           "depth_protocol_for"]


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
        if len(gt_depth) != len(fused["depth"]):
            raise InputError(f"{seq.source}: {len(gt_depth)} depth maps, reconstruction has {len(fused['depth'])} frames")
    metrics = sequence_metrics(
        seq.dataset, fused["depth"], fused["confidence"], fused["cam_to_world"], fused["intrinsics"],
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
