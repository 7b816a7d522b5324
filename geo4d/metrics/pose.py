"""Camera-pose metrics: ATE and RPE exactly as ``evo`` (1.38) computes them, on NumPy arrays.

Definitions (``Q_i`` ground-truth ``world_from_cam``, ``P_i`` estimated ``world_from_cam``):

* **Alignment** (``align="sim3"``): Umeyama on the camera centres, ``q_i ≈ s R p_i + t``
  (:func:`geo4d.align.umeyama`, estimate → ground truth); the aligned estimate is
  ``P'_i = [R | t] · [R_i | s p_i]``, i.e. rotations ``R R_i`` and centres ``s R p_i + t``.
  ``"se3"`` fixes ``s = 1``; ``None`` leaves the estimate as it is.
* **ATE** = ``sqrt(mean_i |p'_i − q_i|²)`` (RMSE of the translation part of the absolute error).
* **RPE** between consecutive poses (Δ = 1 frame): ``E_i = (Q_i⁻¹ Q_{i+1})⁻¹ (P'_i⁻¹ P'_{i+1})``;
  ``rpe_trans = sqrt(mean_i |t(E_i)|²)`` and ``rpe_rot = sqrt(mean_i angle(R(E_i))²)`` in **degrees**,
  the angle being the norm of the rotation vector (scipy's ``Rotation``, as evo does).

These are the numbers of ``evo_ape tum GT EST -as`` and
``evo_rpe tum GT EST -as --delta 1 --delta_unit f -r trans_part|angle_deg``; the tests check the
agreement with evo itself to 1e-6 relative. Reimplemented (rather than calling evo) because the
pipeline evaluates in-memory pose arrays many times (fusion benchmarks), and importing evo pulls in
matplotlib and costs seconds; :func:`geo4d.metrics.trajectory.evaluate_tum_files_evo` runs evo
itself for cross-checks.
"""

from __future__ import annotations

import numpy as np

from geo4d.align import umeyama
from geo4d.cameras import check_shape

__all__ = ["POSE_METRIC_KEYS", "POSE_ALIGN_METHODS", "pose_metrics", "align_trajectory", "rotation_angles_rad",
           "relative_errors", "path_length"]

#: Keys returned by :func:`pose_metrics`.
POSE_METRIC_KEYS = (
    "ate",          # RMSE of camera-centre errors after alignment (ground-truth units)
    "rpe_trans",    # RMSE of the translation part of consecutive relative-pose errors (GT units)
    "rpe_rot",      # RMSE of the rotation angle of consecutive relative-pose errors (degrees)
    "path_length",  # length of the ground-truth camera path
    "ate_rel",      # ate / path_length
    "align_scale",  # scale s of the alignment (1 for se3 / none)
    "n_poses",      # number of poses compared
)

POSE_ALIGN_METHODS = ("sim3", "se3", None)


def rotation_angles_rad(R: np.ndarray) -> np.ndarray:
    """Rotation angles (radians) of matrices (…,3,3): ``|rotvec|`` via scipy's ``Rotation``.

    scipy projects a slightly non-orthonormal matrix to the nearest rotation first; evo computes
    RPE angles the same way, and unlike ``arccos((tr R − 1)/2)`` it stays accurate for tiny angles.
    """
    from scipy.spatial.transform import Rotation

    check_shape(R, ("...", 3, 3), "R")
    flat = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    if flat.shape[0] == 0:
        return np.zeros(np.shape(R)[:-2])
    ang = np.linalg.norm(Rotation.from_matrix(flat).as_rotvec(), axis=-1)
    return ang.reshape(np.shape(R)[:-2])


def _se3_inverse(T: np.ndarray) -> np.ndarray:
    R = T[..., :3, :3]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ T[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def align_trajectory(
    est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray, align: str | None = "sim3"
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Align an estimated trajectory to the ground truth on camera centres (Umeyama).

    Returns:
        (aligned (T,4,4), s, R (3,3), t (3,)) with ``aligned_i = [[R R_i, s R p_i + t], [0, 1]]``.
    """
    if align not in POSE_ALIGN_METHODS:
        raise ValueError(f"align: expected one of {POSE_ALIGN_METHODS}, got {align!r}")
    est = np.asarray(est_world_from_cam, dtype=np.float64)
    gt = np.asarray(gt_world_from_cam, dtype=np.float64)
    if align is None:
        return est.copy(), 1.0, np.eye(3), np.zeros(3)
    s, R, t = umeyama(est[:, :3, 3], gt[:, :3, 3], with_scale=(align == "sim3"))
    out = np.zeros_like(est)
    out[:, :3, :3] = R @ est[:, :3, :3]
    out[:, :3, 3] = (s * est[:, :3, 3]) @ R.T + t
    out[:, 3, 3] = 1.0
    return out, float(s), R, t


def relative_errors(est_aligned: np.ndarray, gt: np.ndarray, delta: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair RPE errors for pairs ``(i, i+delta)``: (translation norms, rotation angles in degrees)."""
    Q_rel = _se3_inverse(gt[:-delta]) @ gt[delta:]
    P_rel = _se3_inverse(est_aligned[:-delta]) @ est_aligned[delta:]
    E = _se3_inverse(Q_rel) @ P_rel
    return np.linalg.norm(E[:, :3, 3], axis=-1), np.degrees(rotation_angles_rad(E[:, :3, :3]))


def path_length(world_from_cam: np.ndarray) -> float:
    """Sum of distances between consecutive camera centres."""
    c = np.asarray(world_from_cam)[:, :3, 3]
    return float(np.sum(np.linalg.norm(c[:-1] - c[1:], axis=1)))


def _rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else float("nan")


def pose_metrics(
    est_world_from_cam: np.ndarray,
    gt_world_from_cam: np.ndarray,
    align: str | None = "sim3",
    *,
    delta: int = 1,
) -> dict[str, float]:
    """ATE and RPE of an estimated camera trajectory against ground truth (poses already paired).

    Args:
        est_world_from_cam: (T, 4, 4) estimated camera-to-world poses (any gauge / scale).
        gt_world_from_cam: (T, 4, 4) ground-truth camera-to-world poses, same frames.
        align: ``"sim3"`` (Umeyama with scale; the benchmarks' setting), ``"se3"`` or ``None``.
        delta: RPE frame distance (1: consecutive frames).

    Returns:
        dict with :data:`POSE_METRIC_KEYS` (floats; ``rpe_rot`` in degrees).

    Raises:
        ValueError: shapes differ, fewer than 2 poses (3 for ``sim3``), or degenerate camera centres.

    Example:
        >>> from geo4d.align import sim3_matrix
        >>> gt = np.tile(np.eye(4), (5, 1, 1)); gt[:, 0, 3] = np.arange(5.0); gt[:, 1, 3] = np.arange(5.0) ** 2
        >>> est = sim3_matrix(2.0, np.eye(3), np.ones(3)) @ gt; est[:, :3, :3] /= 2.0
        >>> m = pose_metrics(est, gt)
        >>> round(m["ate"], 9), round(m["rpe_trans"], 9), round(m["rpe_rot"], 9), round(m["align_scale"], 9)
        (0.0, 0.0, 0.0, 0.5)
    """
    check_shape(est_world_from_cam, (None, 4, 4), "est_world_from_cam")
    check_shape(gt_world_from_cam, (np.shape(est_world_from_cam)[0], 4, 4), "gt_world_from_cam")
    T = np.shape(gt_world_from_cam)[0]
    need = 3 if align == "sim3" else 2
    if T < max(need, delta + 1):
        raise ValueError(f"pose_metrics: need at least {max(need, delta + 1)} poses, got {T}")
    gt = np.asarray(gt_world_from_cam, dtype=np.float64)
    est = np.asarray(est_world_from_cam, dtype=np.float64)
    for name, a in (("est_world_from_cam", est), ("gt_world_from_cam", gt)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: contains NaN or inf")
    if align is not None:
        c = est[:, :3, 3] - est[:, :3, 3].mean(0)
        sv = np.linalg.svd(c, compute_uv=False)
        if sv[0] <= 1e-12 * max(1.0, np.abs(est[:, :3, 3]).max()):
            raise ValueError("pose_metrics: estimated camera centres are all identical; cannot align")
    aligned, s, _, _ = align_trajectory(est, gt, align)
    ate = _rmse(np.linalg.norm(aligned[:, :3, 3] - gt[:, :3, 3], axis=1))
    tr, rot = relative_errors(aligned, gt, delta)
    L = path_length(gt)
    return {
        "ate": ate,
        "rpe_trans": _rmse(tr),
        "rpe_rot": _rmse(rot),
        "path_length": L,
        "ate_rel": ate / L if L > 0 else float("nan"),
        "align_scale": s,
        "n_poses": float(T),
    }
