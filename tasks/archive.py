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
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from geo4d.errors import Geo4DError, LeaseHeldError, LeaseLostError, SettingsChangedError
from geo4d.fusion import FusionConfig
from pipeline import stages
from pipeline.predictors import PredictorSpec, predictor_image_size
from pipeline.report import try_video_report
from storage.sources import parse_intrinsics
from storage.store import Store
from tasks.cluster import sampling_slot, worker_identity
from tasks.common import STAGE_TASK_OPTIONS, is_transient, open_store, progress_logger, video_lease

__all__ = ["new_summary", "rejected_summary", "unfinished_summary", "decode_video_task", "shots_video_task",
           "sample_windows_task",
           "fuse_video_task", "evaluate_video_task", "report_video_task"]


def new_summary(source: dict) -> dict:
    """The summary an archive video starts with (``source``: a planned :class:`storage.sources.VideoSource`
    as dict, its ``video_id`` set)."""
    return {"video_id": source["video_id"], "source": source["path"], "also": list(source.get("also") or ()),
            "intrinsics": source.get("intrinsics"), "status": "complete", "failed_stage": None, "error": None, "windows_predicted": 0,
            "network_load": None, "seconds": {}, "task_seconds": 0.0, "workers": {}}


def rejected_summary(row: dict) -> dict:
    """The summary of a source row rejected before the run (nothing written for it)."""
    out = new_summary({"video_id": row["video_id"] or "?", "path": row["path"]})
    out.update(status="failed", failed_stage="sources", error=row["reason"])
    return out


def unfinished_summary(source: dict, stage: str, error: str) -> dict:
    """The summary of a video whose ``stage`` task ended without a result (retries exhausted, worker
    lost): failed there with ``error``, so the run reports it and goes on."""
    out = new_summary(source)
    out.update(status="failed", failed_stage=stage, error=error)
    return out


def _run_stage(summary: dict, stage: str, store: Store, work: Callable[..., stages.StageResult],
               storage_options: dict | None = None) -> dict:
    """Run one stage of a video under its lease unless an earlier one failed; record a permanent
    failure. A video another writer holds is skipped with who holds it (nothing written)."""
    if summary["status"] != "complete":
        return summary
    summary = dict(summary, seconds=dict(summary["seconds"]), workers=dict(summary["workers"]))
    summary["workers"][stage] = worker_identity()
    t0 = time.perf_counter()
    try:
        with video_lease(store.location, summary["video_id"], storage_options) as lease:
            result = work(lease)
        summary["seconds"][stage] = result.seconds
        summary.setdefault("details", {})[stage] = result.details
    except Geo4DError as exc:
        _record_failure(store, summary, stage, exc)
    except Exception as exc:
        if is_transient(exc):
            raise  # Prefect retries it (STAGE_TASK_OPTIONS)
        # an unforeseen fault (a bug, a library's error) fails this video only, traceback logged
        get_run_logger().exception("%s: %s raised", summary["video_id"], stage)
        _record_failure(store, summary, stage, Geo4DError(f"{type(exc).__name__}: {exc}"))
    summary["task_seconds"] += time.perf_counter() - t0
    return summary


def _record_failure(store: Store, summary: dict, stage: str, exc: Geo4DError) -> None:
    msg, vid, path, run_id = str(exc), summary["video_id"], summary["source"], _run_id()
    if isinstance(exc, SettingsChangedError | LeaseHeldError | LeaseLostError):
        pass  # the finished stage stays as it is / another writer has the video
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
                      overwrite: bool = False, resize: str = "crop") -> dict:
    """Decode one video of the archive at the size the predictor wants, brought there by ``resize``."""
    st, summary = open_store(store, storage_options), new_summary(source)
    out = _run_stage(summary, "decode", st, lambda lease: stages.decode_stage(
        st, summary["source"], video_id=summary["video_id"], size=predictor_image_size(predictor),
        resize=resize, run_id=_run_id(), overwrite=overwrite), storage_options)
    if out["status"] == "complete" and out["also"]:
        st.record_source_paths(out["video_id"], [out["source"], *out["also"]])
    return out


@task(name="shots", **STAGE_TASK_OPTIONS)
def shots_video_task(summary: dict, store: str, shots: dict | None = None, storage_options: dict | None = None,
                     overwrite: bool = False) -> dict:
    """Find the video's shots (:func:`pipeline.stages.shots_stage`); ``summary["shots"]``: how many."""
    st = open_store(store, storage_options)
    out = _run_stage(summary, "shots", st, lambda lease: stages.shots_stage(
        st, summary["video_id"], shots=shots, run_id=_run_id(), overwrite=overwrite), storage_options)
    found = out.get("details", {}).get("shots") or {}
    out["shots"] = found.get("shots")
    out["shots_skipped"] = found.get("skipped")
    return out


@task(name="sample-windows", **STAGE_TASK_OPTIONS)
def sample_windows_task(summary: dict, store: str, predictor: PredictorSpec, storage_options: dict | None = None,
                        bound: int | None = None, overwrite: bool = False) -> dict:
    """Sample the video's missing windows (the GPU stage) on the resident network of this worker.

    ``bound``: at most this many sampling at once (:func:`tasks.cluster.sampling_slot`) — for clusters
    without GPU resources; with them, Dask's resources place one task per GPU.
    """
    st, logger = open_store(store, storage_options), get_run_logger()

    def work(lease) -> stages.StageResult:
        with sampling_slot(bound):
            return stages.windows_stage(st, summary["video_id"], predictor, run_id=_run_id(),
                                        progress=progress_logger(logger, stage="windows", console=False),
                                        overwrite=overwrite, lease=lease)

    out = _run_stage(summary, "windows", st, work, storage_options)
    details = out.get("details", {}).get("windows") or {}
    out["windows_predicted"] = int(details.get("predicted") or 0)
    out["network_load"] = details.get("network_load")
    return out


@task(name="fuse", **STAGE_TASK_OPTIONS)
def fuse_video_task(summary: dict, store: str, fusion: FusionConfig | None = None,
                    storage_options: dict | None = None, overwrite: bool = False) -> dict:
    st = open_store(store, storage_options)
    known = summary.get("intrinsics")
    return _run_stage(summary, "fuse", st, lambda lease: stages.fuse_stage(
        st, summary["video_id"], fusion=fusion, run_id=_run_id(), overwrite=overwrite,
        intrinsics=None if known is None else parse_intrinsics(known, "intrinsics")), storage_options)


@task(name="evaluate", **STAGE_TASK_OPTIONS)
def evaluate_video_task(summary: dict, store: str, storage_options: dict | None = None,
                        overwrite: bool = False) -> dict:
    st = open_store(store, storage_options)
    out = _run_stage(summary, "evaluate", st, lambda lease: stages.evaluate_stage(
        st, summary["video_id"], run_id=_run_id(), overwrite=overwrite), storage_options)
    out["metrics"] = (out.get("details", {}).get("evaluate") or {}).get("metrics")
    return out


@task(name="report", cache_policy=NO_CACHE)
def report_video_task(summary: dict, store: str, storage_options: dict | None = None) -> dict:
    """Draw a complete video's report figure into the store (``summary["report"]``: its location);
    a failure is a warning and ``summary["report_error"]``, never a failed video."""
    if summary["status"] != "complete":
        return summary
    out = try_video_report(store, summary["video_id"], storage_options)
    if out["error"]:
        get_run_logger().warning("%s: report not written: %s", summary["video_id"], out["error"])
    return dict(summary, report=out["location"], report_error=out["error"])
