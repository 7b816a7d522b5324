"""Per-video reconstruction: decode → shots → sample-windows → fuse → evaluate."""

from __future__ import annotations

from prefect import flow

from geo4d.fusion import FusionConfig
from geo4d.windows import WINDOW_SIZE, WINDOW_STRIDE
from pipeline.predictors import PredictorSpec, parse_predictor_spec, predictor_image_size
from tasks.reconstruct import decode_task, evaluate_task, fuse_task, report_task, shots_task, windows_task


@flow(name="reconstruct-video", log_prints=True)
def reconstruct_video(
    video: str,
    store: str,
    predictor: PredictorSpec | None = None,
    video_id: str | None = None,
    frame_stride: int = 1,
    resize: str = "crop",
    intrinsics: list[float] | None = None,
    window_size: int = WINDOW_SIZE,
    window_stride: int = WINDOW_STRIDE,
    fusion: FusionConfig | None = None,
    evaluate: bool = True,
    ground_truth: str | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    lease_wait: float | None = None,
    report: bool = True,
    shots: dict | None = None,
) -> dict:
    """Reconstruct one video into ``store``; finished stages are skipped on a rerun.

    ``predictor`` is a spec (:mod:`pipeline.predictors`; a mapping is validated into one); the
    default is the synthetic test instrument, which needs the video's ``.gt`` ground truth.
    ``resize`` brings frames to the network size (``crop``, ``pad``, ``stretch``: :mod:`geo4d.framing`);
    ``intrinsics`` ``[fx, fy, cx, cy]`` in source pixels fixes the camera's K in the fusion.
    ``fusion`` is a :class:`geo4d.fusion.FusionConfig` (default: its defaults). A stage finished with
    other settings stops the run with the differing setting unless ``overwrite``. Another writer of
    the same video is waited for ``lease_wait`` seconds (None: as long as it takes; 0: fail at once).
    ``shots``: :class:`pipeline.shots.ShotSettings` fields (default: PySceneDetect; ``{"detector":
    "off"}``: one shot). ``report`` draws ``STORE/reports/<id>.png`` last (:mod:`pipeline.report`; a failure is a warning).
    """
    predictor = parse_predictor_spec(predictor)
    decoded = decode_task(video, store, video_id=video_id, size=predictor_image_size(predictor), resize=resize,
                          frame_stride=frame_stride, storage_options=storage_options, overwrite=overwrite,
                          lease_wait=lease_wait)
    vid = decoded["video_id"]
    found = shots_task(store, vid, shots=shots, window_size=window_size, storage_options=storage_options,
                       overwrite=overwrite, lease_wait=lease_wait)
    windows = windows_task(store, vid, predictor, window_size=window_size, stride=window_stride,
                           storage_options=storage_options, overwrite=overwrite, lease_wait=lease_wait)
    fused = fuse_task(store, vid, fusion=fusion, storage_options=storage_options, overwrite=overwrite,
                      lease_wait=lease_wait, intrinsics=intrinsics)
    result = {"video_id": vid, "decode": decoded, "shots": found, "windows": windows, "fuse": fused}
    if evaluate:
        result["evaluate"] = evaluate_task(store, vid, ground_truth=ground_truth, storage_options=storage_options,
                                           overwrite=overwrite, lease_wait=lease_wait)
    if report:
        result["report"] = report_task(store, vid, storage_options=storage_options)
    return result
