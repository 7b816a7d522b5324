"""Prefect tasks of the per-video reconstruction: thin wrappers of :mod:`pipeline.stages`.

Each stage runs under the video's lease (:func:`tasks.common.video_lease`): a second ``geo4d
reconstruct`` of the same video waits (``lease_wait`` seconds, None: as long as it takes) and then
finds the stage done instead of doing it again.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from geo4d.fusion import FusionConfig
from geo4d.windows import WINDOW_SIZE, WINDOW_STRIDE
from pipeline import stages
from pipeline.predictors import PredictorSpec
from pipeline.report import try_video_report
from storage.store import video_id_for
from tasks.common import STAGE_TASK_OPTIONS, open_store, progress_logger, report_stage, video_lease


@task(name="decode", **STAGE_TASK_OPTIONS)
def decode_task(video: str, store: str, video_id: str | None = None, size: tuple[int, int] | None = None,
                resize: str = "crop", frame_stride: int = 1, storage_options: dict | None = None, overwrite: bool = False,
                lease_wait: float | None = None) -> dict:
    if not Path(video).is_file():  # the stage says what is wrong with it, before any lease
        video_id = video_id or "unreadable"
    vid = video_id or video_id_for(video)
    st = open_store(store, storage_options)  # the store exists before its leases do
    with video_lease(store, vid, storage_options, lease_wait):
        res = stages.decode_stage(st, video, video_id=vid, size=size, resize=resize,
                                  frame_stride=frame_stride, run_id=str(flow_run.id),
                                  progress=progress_logger(get_run_logger(), every=64, stage="decode"),
                                  overwrite=overwrite)
    return report_stage(res)


@task(name="shots", **STAGE_TASK_OPTIONS)
def shots_task(store: str, video_id: str, shots: dict | None = None, window_size: int = WINDOW_SIZE,
               storage_options: dict | None = None, overwrite: bool = False, lease_wait: float | None = None) -> dict:
    with video_lease(store, video_id, storage_options, lease_wait):
        res = stages.shots_stage(open_store(store, storage_options), video_id, shots=shots, window_size=window_size,
                                 run_id=str(flow_run.id), overwrite=overwrite)
    return report_stage(res)


@task(name="sample-windows", **STAGE_TASK_OPTIONS)
def windows_task(store: str, video_id: str, predictor: PredictorSpec, window_size: int = WINDOW_SIZE,
                 stride: int = WINDOW_STRIDE, storage_options: dict | None = None, overwrite: bool = False,
                 lease_wait: float | None = None) -> dict:
    with video_lease(store, video_id, storage_options, lease_wait) as lease:
        res = stages.windows_stage(open_store(store, storage_options), video_id, predictor, window_size=window_size,
                                   stride=stride, run_id=str(flow_run.id), overwrite=overwrite, lease=lease,
                                   progress=progress_logger(get_run_logger(), stage="windows"))
    return report_stage(res)


@task(name="fuse", **STAGE_TASK_OPTIONS)
def fuse_task(store: str, video_id: str, fusion: FusionConfig | None = None,
              storage_options: dict | None = None, overwrite: bool = False, lease_wait: float | None = None,
              intrinsics: list[float] | None = None) -> dict:
    with video_lease(store, video_id, storage_options, lease_wait):
        res = stages.fuse_stage(open_store(store, storage_options), video_id, fusion=fusion, run_id=str(flow_run.id),
                                progress=progress_logger(get_run_logger(), every=5, stage="fuse"), overwrite=overwrite,
                                intrinsics=intrinsics)
    return report_stage(res)


@task(name="evaluate", **STAGE_TASK_OPTIONS)
def evaluate_task(store: str, video_id: str, ground_truth: str | None = None,
                  storage_options: dict | None = None, overwrite: bool = False,
                  lease_wait: float | None = None) -> dict:
    with video_lease(store, video_id, storage_options, lease_wait):
        res = stages.evaluate_stage(open_store(store, storage_options), video_id, ground_truth=ground_truth,
                                    run_id=str(flow_run.id), overwrite=overwrite)
    return report_stage(res)


@task(name="report", cache_policy=NO_CACHE)
def report_task(store: str, video_id: str, storage_options: dict | None = None) -> dict:
    """Draw the video's report figure into the store (:mod:`pipeline.report`); a failure is logged as a
    warning and returned (``error``), never raised: the video is not failed for its figure."""
    out = try_video_report(store, video_id, storage_options)
    if out["error"]:
        get_run_logger().warning("%s: report not written: %s", video_id, out["error"])
    return out
