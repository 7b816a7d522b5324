"""Per-video reconstruction: decode → windows → predict → fuse → evaluate."""

from __future__ import annotations

from prefect import flow

from geo4d.predictor import predictor_image_size
from tasks.reconstruct import decode_task, evaluate_task, fuse_task, windows_task

SYNTHETIC = {"kind": "synthetic"}


@flow(name="reconstruct-video", log_prints=True)
def reconstruct_video(
    video: str,
    store: str,
    predictor: dict | None = None,
    video_id: str | None = None,
    frame_stride: int = 1,
    window_size: int = 16,
    window_stride: int = 4,
    fusion: dict | None = None,
    evaluate: bool = True,
    ground_truth: str | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Reconstruct one video into ``store``; finished stages are skipped on a rerun.

    ``predictor`` is a spec (see :func:`geo4d.predictor.predictor_from_spec`); the default is the
    synthetic test instrument, which needs the video's ``.gt`` ground truth.
    """
    predictor = predictor or SYNTHETIC
    decoded = decode_task(video, store, video_id=video_id, size=predictor_image_size(predictor),
                          frame_stride=frame_stride, storage_options=storage_options)
    vid = decoded["video_id"]
    windows = windows_task(store, vid, predictor, window_size=window_size, stride=window_stride,
                           storage_options=storage_options)
    fused = fuse_task(store, vid, fusion=fusion, storage_options=storage_options)
    result = {"video_id": vid, "decode": decoded, "windows": windows, "fuse": fused}
    if evaluate:
        result["evaluate"] = evaluate_task(store, vid, ground_truth=ground_truth, storage_options=storage_options)
    return result
