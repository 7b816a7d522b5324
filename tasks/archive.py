"""Prefect task of archive runs: one coarse task per video (all its stages), failures isolated per video."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from geo4d.errors import Geo4DError
from geo4d.fusion import FusionConfig
from pipeline import stages
from pipeline.predictors import PredictorSpec, predictor_image_size
from storage.store import video_id_for
from tasks.common import STAGE_TASK_OPTIONS, open_store


@contextmanager
def _gpu_slot(max_gpu_tasks: int | None):
    """Hold one of ``max_gpu_tasks`` cluster-wide leases (a Dask ``Semaphore`` kept by the scheduler)
    while sampling; the CPU stages of other videos run meanwhile. No limit outside a Dask worker."""
    if not max_gpu_tasks:
        yield
        return
    try:
        from distributed import Semaphore, get_client

        get_client()
    except (ImportError, ValueError):
        yield
        return
    with Semaphore(max_leases=int(max_gpu_tasks), name="geo4d-gpu-stage"):
        yield


@task(name="reconstruct-one", **STAGE_TASK_OPTIONS)
def reconstruct_one_task(source: dict, store: str, predictor: PredictorSpec, fusion: FusionConfig | None = None,
                         evaluate: bool = True, storage_options: dict | None = None,
                         max_gpu_tasks: int | None = None) -> dict:
    """Run (or resume) every stage of one video. A permanent fault (bad video, invalid predictions)
    is recorded in the store as the failed stage with its reason and returned, not raised, so the
    other videos go on; transient faults raise and are retried by Prefect."""
    logger = get_run_logger()
    run_id = str(flow_run.id) if flow_run.id else None
    st = open_store(store, storage_options)
    path = source["path"]
    p = Path(path)
    vid = source.get("video_id") or (video_id_for(p) if p.is_file() else f"{p.stem or 'video'}-missing")
    summary: dict = {"video_id": vid, "source": path, "status": "complete", "failed_stage": None, "error": None,
                     "windows_predicted": 0, "seconds": {}}
    stage = "decode"
    t_task = time.perf_counter()
    try:
        r = stages.decode_stage(st, path, video_id=vid, size=predictor_image_size(predictor), run_id=run_id)
        summary["seconds"]["decode"] = r.seconds
        stage = "windows"
        with _gpu_slot(max_gpu_tasks):
            r = stages.windows_stage(st, vid, predictor, run_id=run_id)
        summary["seconds"]["windows"] = r.seconds
        summary["windows_predicted"] = r.details.get("predicted", 0)
        stage = "fuse"
        r = stages.fuse_stage(st, vid, fusion=fusion, run_id=run_id)
        summary["seconds"]["fuse"] = r.seconds
        if evaluate:
            stage = "evaluate"
            r = stages.evaluate_stage(st, vid, run_id=run_id)
            summary["seconds"]["evaluate"] = r.seconds
            summary["metrics"] = r.details.get("metrics")
    except Geo4DError as exc:
        msg = str(exc)
        if stage == "decode":
            st.record_unreadable_video(vid, str(p.resolve()) if p.exists() else path, msg, run_id=run_id)
        else:
            st.record_stage(vid, stage, "failed", run_id=run_id, error=msg)
        summary.update(status="failed", failed_stage=stage, error=msg)
        logger.warning("%s (%s): %s failed: %s", vid, path, stage, msg)
    summary["task_seconds"] = time.perf_counter() - t_task
    return summary
