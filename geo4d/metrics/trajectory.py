"""TUM-format trajectories: reading, writing, timestamp association and evo-equivalent evaluation.

A TUM trajectory file has one pose per line, ``timestamp tx ty tz qx qy qz qw`` (camera-to-world:
``t`` is the camera centre, the quaternion — scalar last — the camera's orientation in the world),
with ``#`` comment lines. :class:`Trajectory` keeps exactly what the file says (timestamps,
positions, quaternions w-first) and derives ``world_from_cam`` matrices as evo does (normalised
quaternion → rotation matrix, here through :class:`scipy.spatial.transform.Rotation`).

Association (:func:`associate`) reproduces ``evo.core.sync.associate_trajectories`` (nearest
timestamp, default maximum difference 0.01 s): the trajectory with fewer poses is walked in order
and each of its stamps takes the closest stamp of the other within ``max_diff`` (ties go to the
earlier stamp; a stamp of the longer trajectory may be taken more than once, as in evo).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geo4d.cameras import check_shape
from geo4d.errors import InputError
from geo4d.metrics.pose import pose_metrics

__all__ = [
    "Trajectory",
    "read_tum_trajectory",
    "write_tum_trajectory",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "associate",
    "evaluate_trajectories",
    "evaluate_tum_files",
    "evaluate_tum_files_evo",
]


def quaternion_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrices (…,3,3) from quaternions (…,4) ``(w, x, y, z)``; normalises first (scipy).

    Agrees with evo's ``transformations.quaternion_matrix`` to rounding (ATE/RPE within ~2e-15
    relative of evo's on the TUM reference trajectories).
    """
    from scipy.spatial.transform import Rotation

    check_shape(q_wxyz, ("...", 4), "q_wxyz")
    q = np.asarray(q_wxyz, dtype=np.float64)
    if np.any(np.sum(q * q, axis=-1) < 4.0 * np.finfo(float).eps):
        raise ValueError("quaternion_to_matrix: zero-norm quaternion")
    R = Rotation.from_quat(q.reshape(-1, 4), scalar_first=True).as_matrix()
    return R.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternions (…,4) ``(w, x, y, z)`` with ``w ≥ 0`` from rotation matrices (…,3,3) (scipy)."""
    from scipy.spatial.transform import Rotation

    check_shape(R, ("...", 3, 3), "R")
    flat = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    q = Rotation.from_matrix(flat).as_quat(scalar_first=True)
    q[q[:, 0] < 0] *= -1.0
    return q.reshape(np.shape(R)[:-2] + (4,))


@dataclass
class Trajectory:
    """Timestamped camera-to-world poses, as stored in a TUM file.

    Attributes:
        timestamps: (N,) float64 seconds.
        positions: (N, 3) float64 camera centres in the world.
        quaternions: (N, 4) float64 orientations ``(w, x, y, z)`` (as read; not re-normalised).
        name: where it came from (for messages).
    """

    timestamps: np.ndarray
    positions: np.ndarray
    quaternions: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64).reshape(-1)
        n = len(self.timestamps)
        check_shape(self.positions, (n, 3), "positions")
        check_shape(self.quaternions, (n, 4), "quaternions")
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.quaternions = np.asarray(self.quaternions, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def world_from_cam(self) -> np.ndarray:
        """(N, 4, 4) camera-to-world matrices."""
        T = np.zeros((len(self), 4, 4))
        T[:, :3, :3] = quaternion_to_matrix(self.quaternions)
        T[:, :3, 3] = self.positions
        T[:, 3, 3] = 1.0
        return T

    @classmethod
    def from_poses(cls, timestamps: np.ndarray, world_from_cam: np.ndarray, name: str = "") -> Trajectory:
        """From (N,) timestamps and (N,4,4) camera-to-world poses."""
        check_shape(world_from_cam, (len(np.reshape(timestamps, -1)), 4, 4), "world_from_cam")
        T = np.asarray(world_from_cam, dtype=np.float64)
        return cls(timestamps, T[:, :3, 3].copy(), matrix_to_quaternion(T[:, :3, :3]), name)

    def subset(self, idx) -> Trajectory:
        idx = np.asarray(idx, dtype=int)
        return Trajectory(self.timestamps[idx], self.positions[idx], self.quaternions[idx], self.name)


def read_tum_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read a TUM trajectory file (``timestamp tx ty tz qx qy qz qw`` per line, ``#`` comments).

    Raises:
        InputError: missing/unreadable file, a line without exactly 8 numbers, a zero quaternion,
            or no pose at all — the message names the file (and line).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such trajectory file" if not p.exists() else f"{p}: not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read trajectory file ({exc})") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.replace(",", " ").split()
        if len(parts) != 8:
            raise InputError(
                f"{p}:{lineno}: expected 8 numbers (timestamp tx ty tz qx qy qz qw), got {len(parts)}"
            )
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            raise InputError(f"{p}:{lineno}: not a number in {s!r}") from None
        if not all(math.isfinite(v) for v in vals):
            raise InputError(f"{p}:{lineno}: non-finite value in {s!r}")
        if sum(v * v for v in vals[4:]) < 4.0 * np.finfo(float).eps:
            raise InputError(f"{p}:{lineno}: zero quaternion")
        rows.append(vals)
    if not rows:
        raise InputError(f"{p}: no poses in trajectory file")
    m = np.array(rows, dtype=np.float64)
    quat = np.roll(m[:, 4:8], 1, axis=1)  # (qx qy qz qw) → (w x y z)
    return Trajectory(m[:, 0], m[:, 1:4], quat, name=str(p))


def write_tum_trajectory(path: str | os.PathLike, traj: Trajectory, header: str | None = None) -> Path:
    """Write ``traj`` as a TUM file; numbers are written with full precision (read back exactly)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    if header:
        lines += [f"# {h}" for h in header.splitlines()]
    q = traj.quaternions
    for k in range(len(traj)):
        vals = [traj.timestamps[k], *traj.positions[k], q[k, 1], q[k, 2], q[k, 3], q[k, 0]]
        lines.append(" ".join(repr(float(v)) for v in vals))
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, p)
    return p


def _matching_indices(stamps_1: np.ndarray, stamps_2: np.ndarray, max_diff: float, offset_2: float):
    """For each stamp of ``stamps_1`` the index of the closest stamp of ``stamps_2 + offset_2``."""
    s2 = stamps_2 + offset_2
    idx1: list[int] = []
    idx2: list[int] = []
    if not np.all(np.diff(s2) >= 0):  # unsorted: linear search
        for i, a in enumerate(stamps_1):
            d = np.abs(s2 - a)
            j = int(np.argmin(d))
            if d[j] <= max_diff:
                idx1.append(i)
                idx2.append(j)
        return idx1, idx2
    n2 = len(s2)
    for i, a in enumerate(stamps_1):
        if a < s2[0] - max_diff or a > s2[-1] + max_diff:
            continue
        j = min(int(np.searchsorted(s2, a, side="right")), n2 - 1)
        d_ub = s2[j] - a
        d_lb = a - s2[j - 1] if j > 0 else float("inf")
        if d_ub <= max_diff and d_ub < d_lb:
            best = j
        elif d_lb <= max_diff and d_lb <= d_ub:
            best = j - 1
        else:
            continue
        idx1.append(i)
        idx2.append(best)
    return idx1, idx2


def associate(
    traj_1: Trajectory, traj_2: Trajectory, max_diff: float = 0.01, offset_2: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i1, i2)`` pairing poses of two trajectories by nearest timestamp (evo's rule).

    Raises:
        InputError: no pair within ``max_diff``.
    """
    second_longer = len(traj_2) > len(traj_1)
    short, long = (traj_1, traj_2) if second_longer else (traj_2, traj_1)
    i_short, i_long = _matching_indices(short.timestamps, long.timestamps, max_diff,
                                        offset_2 if second_longer else -offset_2)
    if not i_short:
        raise InputError(
            f"no matching timestamps between {traj_1.name or 'first trajectory'} and "
            f"{traj_2.name or 'second trajectory'} within {max_diff} s (offset {offset_2} s)"
        )
    i_short, i_long = np.asarray(i_short, dtype=int), np.asarray(i_long, dtype=int)
    return (i_short, i_long) if second_longer else (i_long, i_short)


def evaluate_trajectories(
    gt: Trajectory,
    est: Trajectory,
    align: str | None = "sim3",
    *,
    max_diff: float = 0.01,
    offset: float = 0.0,
    replace_timestamps: bool = False,
) -> dict[str, float]:
    """ATE / RPE of ``est`` against ``gt`` after timestamp association (see :func:`pose_metrics`).

    Args:
        replace_timestamps: when both have the same number of poses, give ``est`` the ground
            truth's timestamps first (what the Geo4D pose evaluation does with predictions stamped
            0…N−1).

    Returns:
        :func:`pose_metrics`' dict plus ``n_associated``.
    """
    if replace_timestamps and len(est) == len(gt):
        est = Trajectory(gt.timestamps.copy(), est.positions, est.quaternions, est.name)
    i_gt, i_est = associate(gt, est, max_diff=max_diff, offset_2=offset)
    need = 3 if align == "sim3" else 2
    if len(i_gt) < need:
        raise InputError(f"{est.name or 'estimate'}: only {len(i_gt)} poses associated with "
                         f"{gt.name or 'ground truth'}; need at least {need}")
    try:
        m = pose_metrics(est.subset(i_est).world_from_cam, gt.subset(i_gt).world_from_cam, align=align)
    except ValueError as exc:
        raise InputError(f"{est.name or 'estimate'}: {exc}") from exc
    m["n_associated"] = float(len(i_gt))
    return m


def evaluate_tum_files(
    gt_path: str | os.PathLike,
    est_path: str | os.PathLike,
    align: str | None = "sim3",
    *,
    max_diff: float = 0.01,
    offset: float = 0.0,
) -> dict[str, float]:
    """``ate``, ``rpe_trans``, ``rpe_rot`` (degrees), … of two TUM files (= ``evo_ape``/``evo_rpe``
    with ``-a``/``-as``, ``--delta 1 --delta_unit f``)."""
    return evaluate_trajectories(read_tum_trajectory(gt_path), read_tum_trajectory(est_path), align,
                                 max_diff=max_diff, offset=offset)


def evaluate_tum_files_evo(
    gt_path: str | os.PathLike,
    est_path: str | os.PathLike,
    align: str | None = "sim3",
    *,
    max_diff: float = 0.01,
    offset: float = 0.0,
) -> dict[str, float]:
    """The same numbers computed by evo itself (imported lazily; for cross-checks)."""
    import copy

    from evo.core import metrics, sync
    from evo.main_ape import ape
    from evo.main_rpe import rpe
    from evo.tools import file_interface

    try:
        ref = file_interface.read_tum_trajectory_file(str(gt_path))
        est = file_interface.read_tum_trajectory_file(str(est_path))
        ref, est = sync.associate_trajectories(ref, est, max_diff=max_diff, offset_2=offset)
    except Exception as exc:  # evo raises its own exception types
        raise InputError(f"evo: {exc}") from exc
    kw = dict(align=align is not None, correct_scale=align == "sim3")
    a = ape(copy.deepcopy(ref), copy.deepcopy(est), metrics.PoseRelation.translation_part, **kw)
    out = {"ate": float(a.stats["rmse"])}
    for key, rel in (("rpe_trans", metrics.PoseRelation.translation_part),
                     ("rpe_rot", metrics.PoseRelation.rotation_angle_deg)):
        r = rpe(copy.deepcopy(ref), copy.deepcopy(est), rel, delta=1, delta_unit=metrics.Unit.frames,
                all_pairs=False, **kw)
        out[key] = float(r.stats["rmse"])
    out["n_associated"] = float(ref.num_poses)
    return out
