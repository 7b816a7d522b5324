"""All metrics of one reconstructed video against its ground truth (depth, poses, focal length)."""

from __future__ import annotations

import numpy as np

from geo4d.cameras import check_shape
from geo4d.metrics.depth import depth_metrics
from geo4d.metrics.pose import pose_metrics

__all__ = ["RECONSTRUCTION_METRIC_KEYS", "reconstruction_metrics", "focal_error_pct"]

#: Keys returned by :func:`reconstruction_metrics` (the first seven are the demo's table).
RECONSTRUCTION_METRIC_KEYS = (
    "abs_rel", "delta_1_25", "ate", "ate_rel", "rpe_trans", "rpe_rot", "focal_err_pct",
    "rmse", "log_rmse", "valid_pixels", "depth_scale", "depth_shift", "path_length", "align_scale",
)


def focal_error_pct(intrinsics: np.ndarray, gt_intrinsics: np.ndarray) -> float:
    """Mean over frames of ``100·|f − f_gt| / f_gt`` with ``f = (fx + fy)/2``.

    Both may be (3,3) (one camera for all frames) or (T,3,3); NaN entries (frames without an
    estimate) are skipped; NaN when none is left.
    """
    check_shape(intrinsics, ("...", 3, 3), "intrinsics")
    check_shape(gt_intrinsics, ("...", 3, 3), "gt_intrinsics")
    K = np.asarray(intrinsics, dtype=np.float64)
    Kg = np.asarray(gt_intrinsics, dtype=np.float64)
    f = 0.5 * (K[..., 0, 0] + K[..., 1, 1])
    fg = 0.5 * (Kg[..., 0, 0] + Kg[..., 1, 1])
    f, fg = np.broadcast_arrays(f, fg)
    ok = np.isfinite(f) & np.isfinite(fg) & (fg > 0)
    if not ok.any():
        return float("nan")
    return float(np.mean(100.0 * np.abs(f[ok] - fg[ok]) / fg[ok]))


def reconstruction_metrics(
    depth: np.ndarray,
    intrinsics: np.ndarray,
    world_from_cam: np.ndarray,
    gt_depth: np.ndarray,
    gt_intrinsics: np.ndarray,
    gt_world_from_cam: np.ndarray,
    *,
    depth_align: str | None = "scale_shift_l1",
    max_depth: float | None = None,
    post_clip_max: float | None = None,
    pose_align: str | None = "sim3",
) -> dict[str, float]:
    """Compare a reconstruction (fused depth, intrinsics, poses) with ground truth.

    * Depth: :func:`geo4d.metrics.depth_metrics` over the whole video — pixels with a finite,
      positive ground truth (``+inf`` sky excluded); one scale and shift per video fitted (exact L1
      by default) on the pixels the reconstruction marks valid (``depth > 0``); pixels the
      reconstruction left empty (depth 0) still count in the metrics, as in the benchmarks.
    * Poses: :func:`geo4d.metrics.pose_metrics` (Sim(3)-aligned ATE, RPE with Δ = 1 frame,
      rotation in degrees).
    * Focal length: :func:`focal_error_pct` (intrinsics are compared directly: both refer to the
      same image size).

    Args:
        depth: (T, H, W) reconstructed depth, 0 where invalid.
        intrinsics: (T, 3, 3) or (3, 3).
        world_from_cam: (T, 4, 4) camera-to-world.
        gt_depth: (T, H, W), ``+inf``/``≤0``/NaN where invalid.
        gt_intrinsics: (T, 3, 3) or (3, 3).
        gt_world_from_cam: (T, 4, 4).

    Returns:
        dict with :data:`RECONSTRUCTION_METRIC_KEYS` (``delta_1_25`` a fraction, ``rpe_rot`` in
        degrees, ``focal_err_pct`` in percent, ``ate_rel`` = ATE / ground-truth path length).
    """
    check_shape(gt_depth, (None, None, None), "gt_depth")
    check_shape(depth, np.shape(gt_depth), "depth")
    check_shape(world_from_cam, (np.shape(gt_depth)[0], 4, 4), "world_from_cam")
    check_shape(gt_world_from_cam, (np.shape(gt_depth)[0], 4, 4), "gt_world_from_cam")
    depth = np.asarray(depth, dtype=np.float64)
    pred_ok = np.isfinite(depth) & (depth > 0)
    d = depth_metrics(np.where(np.isfinite(depth), depth, 0.0), gt_depth, align=depth_align,
                      max_depth=max_depth, post_clip_max=post_clip_max, align_mask=pred_ok)
    p = pose_metrics(world_from_cam, gt_world_from_cam, align=pose_align)
    return {
        "abs_rel": d["abs_rel"],
        "delta_1_25": d["delta_1_25"],
        "ate": p["ate"],
        "ate_rel": p["ate_rel"],
        "rpe_trans": p["rpe_trans"],
        "rpe_rot": p["rpe_rot"],
        "focal_err_pct": focal_error_pct(intrinsics, gt_intrinsics),
        "rmse": d["rmse"],
        "log_rmse": d["log_rmse"],
        "valid_pixels": d["valid_pixels"],
        "depth_scale": d["scale"],
        "depth_shift": d["shift"],
        "path_length": p["path_length"],
        "align_scale": p["align_scale"],
    }
