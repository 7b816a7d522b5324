"""Helpers shared by the Prefect tasks: transient-vs-permanent retry policy and progress logging."""

from __future__ import annotations

import errno
from contextlib import contextmanager

from geo4d.errors import Geo4DError


_PERMANENT_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)


def is_transient(exc: BaseException | None) -> bool:
    """Faults worth retrying: I/O errors (except missing files), lost connections, CUDA OOM, lost workers.

    Permanent faults — bad inputs, invalid predictions, any :class:`Geo4DError`, programming errors —
    fail at once so the video is recorded as failed with its reason.
    """
    if exc is None or isinstance(exc, Geo4DError):
        return False
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        return False
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        # a full disk, a read-only store or a quota will not heal by retrying in 2 s
        return exc.errno not in _PERMANENT_ERRNOS if isinstance(exc, OSError) else True
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("CUDA out of memory", "OutOfMemoryError", "KilledWorker", "CommClosedError"))


def retry_transient(task, task_run, state) -> bool:  # Prefect's retry_condition_fn signature
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    return is_transient(exc)


def progress_logger(logger, every: int = 1, stage: str = "", console: bool = True):
    """A ``progress(done, total, message)`` callable: every ``every``-th step (and the last) to the
    Prefect run logger, and every step to the command's console (:mod:`tasks.progress`, which
    throttles it) unless ``console`` is False (an archive's videos: their lines would interleave)."""
    from tasks.progress import console as open_console

    def progress(done: int, total: int, message: str = "") -> None:
        if total and (done % every == 0 or done == total):
            logger.info("%s %s/%s %s", stage, done, total, message)
        screen = open_console() if console else None
        if screen is not None and total:
            screen.update(stage or "progress", done, total, message)

    return progress


def _task_options() -> dict:
    from prefect.cache_policies import NO_CACHE

    # Stage records in the store are the resume mechanism (docs/orchestration.md), not Prefect's cache.
    return dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)


#: Options shared by every stage task: transient faults retry with backoff, no Prefect caching.
STAGE_TASK_OPTIONS = _task_options()


def open_store(location: str, storage_options: dict | None = None):
    from storage.store import Store

    return Store(location, mode="a", storage_options=storage_options)


def report_stage(result) -> dict:
    """Log a :class:`pipeline.stages.StageResult` through the run logger and return it as a dict."""
    from dataclasses import asdict

    from prefect import get_run_logger

    from tasks.progress import say

    logger = get_run_logger()
    if result.skipped:
        logger.info("%s: %s already complete, skipped", result.video_id, result.stage)
        say(f"  {result.stage}: already complete, skipped")
    else:
        logger.info("%s: %s done in %.2f s", result.video_id, result.stage, result.seconds)
        say(f"  {result.stage}: done in {result.seconds:.1f} s")
    return asdict(result)


@contextmanager
def video_lease(store: str, video_id: str, storage_options: dict | None = None, wait: float | None = 0.0):
    """The video's lease (:class:`storage.leases.VideoLease`) for this flow run, held inside the block:
    ``wait`` seconds for another holder (None: as long as it takes, saying once who holds it)."""
    from prefect.runtime import flow_run

    from storage.leases import VideoLease
    from tasks.progress import say

    lease = VideoLease(store, video_id, run_id=str(flow_run.id) if flow_run.id else None,
                       storage_options=storage_options)

    def waiting(holder) -> None:
        say(f"  video {video_id} is being written by {holder.describe()}: waiting for it")

    lease.acquire(wait=wait, on_wait=waiting)
    try:
        yield lease
    finally:
        lease.release()
