"""Prefect tasks of the per-video reconstruction: thin wrappers of :mod:`geo4d.stages`."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from geo4d import stages
from storage.store import Store
from tasks.common import progress_logger, retry_transient

_TASK = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)


def _store(location: str, storage_options: dict | None) -> Store:
    return Store(location, mode="a", storage_options=storage_options)


def _report(result: stages.StageResult) -> dict:
    logger = get_run_logger()
    if result.skipped:
        logger.info("%s: %s already complete, skipped", result.video_id, result.stage)
    else:
        logger.info("%s: %s done in %.2f s", result.video_id, result.stage, result.seconds)
    return asdict(result)


@task(name="decode", **_TASK)
def decode_task(video: str, store: str, video_id: str | None = None, size: tuple[int, int] | None = None,
                frame_stride: int = 1, storage_options: dict | None = None) -> dict:
    res = stages.decode_stage(_store(store, storage_options), video, video_id=video_id, size=size,
                              frame_stride=frame_stride, run_id=str(flow_run.id),
                              progress=progress_logger(get_run_logger(), every=64))
    return _report(res)


@task(name="predict-windows", **_TASK)
def windows_task(store: str, video_id: str, predictor: dict, window_size: int = 16, stride: int = 4,
                 storage_options: dict | None = None) -> dict:
    res = stages.windows_stage(_store(store, storage_options), video_id, predictor, window_size=window_size,
                               stride=stride, run_id=str(flow_run.id), progress=progress_logger(get_run_logger()))
    return _report(res)


@task(name="fuse", **_TASK)
def fuse_task(store: str, video_id: str, fusion: dict | None = None, storage_options: dict | None = None) -> dict:
    res = stages.fuse_stage(_store(store, storage_options), video_id, fusion=fusion, run_id=str(flow_run.id),
                            progress=progress_logger(get_run_logger(), every=5))
    return _report(res)


@task(name="evaluate", **_TASK)
def evaluate_task(store: str, video_id: str, ground_truth: str | None = None,
                  storage_options: dict | None = None) -> dict:
    res = stages.evaluate_stage(_store(store, storage_options), video_id, ground_truth=ground_truth,
                                run_id=str(flow_run.id))
    return _report(res)
