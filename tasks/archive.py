"""Prefect tasks of archive runs: one task per stage and video, failures isolated per video.

Each task takes the video's running summary (a dict: id, source, status, stage seconds, …) and returns
it updated, so a cluster can place each stage on its own worker: ``sample-windows`` on a GPU worker,
the others anywhere. A permanent fault (bad video, invalid predictions, changed settings) ends the
video's chain: it is recorded in the store as the failed stage with its reason (except changed
settings, which leave the store untouched) and later tasks pass the summary on unchanged; transient
faults raise and are retried by Prefect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from geo4d.errors import Geo4DError, SettingsChangedError
from geo4d.fusion import FusionConfig
from pipeline import stages
from pipeline.predictors import PredictorSpec, predictor_image_size
from storage.store import Store, video_id_for
from tasks.cluster import sampling_slot, worker_identity
from tasks.common import STAGE_TASK_OPTIONS, open_store, progress_logger

__all__ = ["new_summary", "decode_video_task", "sample_windows_task", "fuse_video_task", "evaluate_video_task"]


def new_summary(source: dict) -> dict:
    """The summary an archive video starts with (``source``: a :class:`storage.sources.Source` as dict)."""
    path = source["path"]
    p = Path(path)
    vid = source.get("video_id") or (video_id_for(p) if p.is_file() else f"{p.stem or 'video'}-missing")
    return {"video_id": vid, "source": path, "status": "complete", "failed_stage": None, "error": None,
            "windows_predicted": 0, "network_load": None, "seconds": {}, "task_seconds": 0.0, "workers": {}}


def _run_stage(summary: dict, stage: str, store: Store, work: Callable[[], stages.StageResult]) -> dict:
    """Run one stage of a video unless an earlier one failed; record a permanent failure."""
    if summary["status"] != "complete":
        return summary
    summary = dict(summary, seconds=dict(summary["seconds"]), workers=dict(summary["workers"]))
    summary["workers"][stage] = worker_identity()
    t0 = time.perf_counter()
    try:
        result = work()
        summary["seconds"][stage] = result.seconds
        summary.setdefault("details", {})[stage] = result.details
    except Geo4DError as exc:
        _record_failure(store, summary, stage, exc)
    summary["task_seconds"] += time.perf_counter() - t0
    return summary


def _record_failure(store: Store, summary: dict, stage: str, exc: Geo4DError) -> None:
    msg, vid, path, run_id = str(exc), summary["video_id"], summary["source"], _run_id()
    if isinstance(exc, SettingsChangedError):
        pass  # the finished stage stays as it is
    elif stage == "decode":
        p = Path(path)
        store.record_unreadable_video(vid, str(p.resolve()) if p.exists() else path, msg, run_id=run_id)
    else:
        store.record_stage(vid, stage, "failed", run_id=run_id, error=msg)
    summary.update(status="failed", failed_stage=stage, error=msg)
    get_run_logger().warning("%s (%s): %s failed: %s", vid, path, stage, msg)


def _run_id() -> str | None:
    return str(flow_run.id) if flow_run.id else None


@task(name="decode", **STAGE_TASK_OPTIONS)
def decode_video_task(source: dict, store: str, predictor: PredictorSpec, storage_options: dict | None = None,
                      overwrite: bool = False) -> dict:
    """Decode one video of the archive at the size the predictor wants."""
    st, summary = open_store(store, storage_options), new_summary(source)
    return _run_stage(summary, "decode", st, lambda: stages.decode_stage(
        st, summary["source"], video_id=summary["video_id"], size=predictor_image_size(predictor),
        run_id=_run_id(), overwrite=overwrite))


@task(name="sample-windows", **STAGE_TASK_OPTIONS)
def sample_windows_task(summary: dict, store: str, predictor: PredictorSpec, storage_options: dict | None = None,
                        bound: int | None = None, overwrite: bool = False) -> dict:
    """Sample the video's missing windows (the GPU stage) on the resident network of this worker.

    ``bound``: at most this many sampling at once (:func:`tasks.cluster.sampling_slot`) — for clusters
    without GPU resources; with them, Dask's resources place one task per GPU.
    """
    st, logger = open_store(store, storage_options), get_run_logger()

    def work() -> stages.StageResult:
        with sampling_slot(bound):
            return stages.windows_stage(st, summary["video_id"], predictor, run_id=_run_id(),
                                        progress=progress_logger(logger), overwrite=overwrite)

    out = _run_stage(summary, "windows", st, work)
    details = out.get("details", {}).get("windows") or {}
    out["windows_predicted"] = int(details.get("predicted") or 0)
    out["network_load"] = details.get("network_load")
    return out


@task(name="fuse", **STAGE_TASK_OPTIONS)
def fuse_video_task(summary: dict, store: str, fusion: FusionConfig | None = None,
                    storage_options: dict | None = None, overwrite: bool = False) -> dict:
    st = open_store(store, storage_options)
    return _run_stage(summary, "fuse", st, lambda: stages.fuse_stage(
        st, summary["video_id"], fusion=fusion, run_id=_run_id(), overwrite=overwrite))


@task(name="evaluate", **STAGE_TASK_OPTIONS)
def evaluate_video_task(summary: dict, store: str, storage_options: dict | None = None,
                        overwrite: bool = False) -> dict:
    st = open_store(store, storage_options)
    out = _run_stage(summary, "evaluate", st, lambda: stages.evaluate_stage(
        st, summary["video_id"], run_id=_run_id(), overwrite=overwrite))
    out["metrics"] = (out.get("details", {}).get("evaluate") or {}).get("metrics")
    return out
