"""nerfstudio's ``transforms.json`` data format (``ns-train <method> --data DIRECTORY``).

Layout::

    directory/transforms.json            camera_model OPENCV, one entry per frame (below)
    directory/images/frame_00000.png …   the frames
    directory/depth/frame_00000.png …    16-bit depth, value · depth_unit_scale_factor = depth (optional)
    directory/points3D.ply               coloured seed points (``ply_file_path``, e.g. for splatfacto; optional)

Per frame: ``file_path``, ``transform_matrix`` (camera-to-world with nerfstudio's OpenGL/Blender
camera axes: x right, y up, z back — ours with the camera's y and z axes flipped,
``world_from_cam @ diag(1, -1, -1, 1)``; the world frame is left as it is, OpenCV axes of frame 0,
nerfstudio re-orients it itself), ``fl_x, fl_y, cx, cy`` (pixels; nerfstudio's pixel coordinates start
at the top-left corner, so ``cx, cy`` are ours + 0.5), ``w, h``, and ``depth_file_path`` with depth.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from geo4d.cameras import check_shape
from geo4d.formats.common import (CORNER_ORIGIN_OFFSET, OPENGL_FROM_OPENCV, UINT16_MAX, depth_scale, quantise_depth,
                                  write_depth_png, write_frames)
from geo4d.formats.ply import write_ply

__all__ = ["NERFSTUDIO_DEPTH_SCALE", "nerfstudio_depth_scale", "nerfstudio_frame", "write_nerfstudio"]

#: nerfstudio's default ``depth_unit_scale_factor`` is 1e-3 (millimetre PNGs): depth · 1000 is used
#: whenever it fits 16 bits, so the defaults read it.
NERFSTUDIO_DEPTH_SCALE = 1000.0


def nerfstudio_depth_scale(max_depth: float) -> float:
    """``value = depth · s``: 1000 (nerfstudio's default unit) when ``max_depth`` fits, else the
    scale putting ``max_depth`` at 65535 (then pass ``--depth-unit-scale-factor 1/s``).

    >>> nerfstudio_depth_scale(3.0), nerfstudio_depth_scale(131.07)
    (1000.0, 500.0)
    """
    return NERFSTUDIO_DEPTH_SCALE if max_depth * NERFSTUDIO_DEPTH_SCALE <= UINT16_MAX else depth_scale(max_depth)


def nerfstudio_frame(K: np.ndarray, world_from_cam: np.ndarray, size: tuple[int, int], file_path: str) -> dict:
    """One ``frames`` entry from our (3, 3) K and (4, 4) camera-to-world (OpenCV axes), ``size`` = (H, W).

    >>> f = nerfstudio_frame(np.diag([50.0, 50.0, 1.0]) + [[0, 0, 31.5], [0, 0, 23.5], [0, 0, 0]], np.eye(4),
    ...                      (48, 64), "images/frame_00000.png")
    >>> f["cx"], f["cy"], f["transform_matrix"][1]
    (32.0, 24.0, [0.0, -1.0, 0.0, 0.0])
    """
    check_shape(K, (3, 3), "K")
    check_shape(world_from_cam, (4, 4), "world_from_cam")
    gl = np.asarray(world_from_cam, np.float64) @ OPENGL_FROM_OPENCV
    return {"file_path": file_path, "transform_matrix": gl.tolist(),
            "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]),
            "cx": float(K[0, 2]) + CORNER_ORIGIN_OFFSET, "cy": float(K[1, 2]) + CORNER_ORIGIN_OFFSET,
            "w": int(size[1]), "h": int(size[0])}


def write_nerfstudio(directory: str | Path, frames: np.ndarray, intrinsics: np.ndarray, world_from_cam: np.ndarray,
                     depth: np.ndarray | None = None, valid: np.ndarray | None = None,
                     points: np.ndarray | None = None, colors: np.ndarray | None = None,
                     extras: Mapping | None = None) -> dict:
    """Write ``transforms.json``, the frames and, when given, depth PNGs and seed points.

    Args:
        frames: (T, H, W, 3) uint8; intrinsics: (T, 3, 3); world_from_cam: (T, 4, 4) (OpenCV axes);
        depth, valid: (T, H, W) z-depth and its mask; points, colors: (N, 3) world float / uint8.
        extras: JSON-able keys added under ``"geo4d"`` (provenance; nerfstudio ignores them).
    Returns:
        ``{"frames": T, "depth_unit_scale_factor": 1/s or None, "points": N or None}``.
    """
    T, H, W = np.shape(frames)[:3]
    check_shape(intrinsics, (T, 3, 3), "intrinsics")
    d = Path(directory)
    names = write_frames(d / "images", frames)
    entries = [nerfstudio_frame(intrinsics[k], world_from_cam[k], (H, W), f"images/{n}") for k, n in enumerate(names)]
    meta: dict = {"camera_model": "OPENCV"}
    unit = None
    if depth is not None:
        check_shape(depth, (T, H, W), "depth")
        ok = np.asarray(valid, bool) if valid is not None else np.asarray(depth) > 0
        s = nerfstudio_depth_scale(float(np.max(depth, where=ok, initial=0.0)))
        (d / "depth").mkdir(parents=True, exist_ok=True)
        for k, n in enumerate(names):
            write_depth_png(d / "depth" / n, quantise_depth(depth[k], ok[k], s))
            entries[k]["depth_file_path"] = f"depth/{n}"
        unit = 1.0 / s
        meta["depth_unit_scale_factor"] = unit  # informative: nerfstudio takes it as a parser option
    n_points = None
    if points is not None:
        n_points = write_ply(d / "points3D.ply", points, colors)
        meta["ply_file_path"] = "points3D.ply"
    meta["frames"] = entries
    if extras:
        meta["geo4d"] = dict(extras)
    (d / "transforms.json").write_text(json.dumps(meta, indent=2))
    return {"frames": T, "depth_unit_scale_factor": unit, "points": n_points}
