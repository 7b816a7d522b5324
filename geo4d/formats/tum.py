"""The camera trajectory as a TUM file (evo, the TUM RGB-D tools, ``geo4d metrics poses``).

One line per frame, ``timestamp tx ty tz qx qy qz qw``: camera-to-world (``t`` the camera centre, the
unit quaternion — scalar last — the camera's orientation; OpenCV camera axes, frame 0 the world
frame), timestamps in seconds; ``#`` header lines carry provenance. Written with
:func:`geo4d.metrics.trajectory.write_tum_trajectory` (full float precision).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geo4d.cameras import check_shape
from geo4d.metrics.trajectory import Trajectory, write_tum_trajectory

__all__ = ["TUM_FILE", "frame_timestamps", "write_tum"]

TUM_FILE = "trajectory.tum"


def frame_timestamps(n_frames: int, fps: float, pts: np.ndarray | None = None) -> np.ndarray:
    """(T,) seconds per frame: the stored presentation times ``pts`` when known, else ``k / fps``, else
    (no frame rate) the frame index ``k``.

    >>> frame_timestamps(3, 10.0).tolist(), frame_timestamps(2, 0.0).tolist()
    ([0.0, 0.1, 0.2], [0.0, 1.0])
    """
    if pts is not None:
        check_shape(pts, (n_frames,), "pts")
        return np.asarray(pts, dtype=np.float64)
    k = np.arange(n_frames, dtype=np.float64)
    return k / fps if fps and fps > 0 else k


def write_tum(directory: str | Path, timestamps: np.ndarray, world_from_cam: np.ndarray, header: str = "") -> dict:
    """Write ``directory/trajectory.tum``.

    Args:
        timestamps: (T,) seconds, increasing; world_from_cam: (T, 4, 4).
    Returns:
        ``{"poses": T, "file": "trajectory.tum"}``.
    """
    check_shape(world_from_cam, (len(np.reshape(timestamps, -1)), 4, 4), "world_from_cam")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    write_tum_trajectory(d / TUM_FILE, Trajectory.from_poses(timestamps, world_from_cam), header=header or None)
    return {"poses": int(np.shape(world_from_cam)[0]), "file": TUM_FILE}
