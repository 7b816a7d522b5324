"""Coloured point clouds as binary PLY, written with plyfile (Open3D, MeshLab, CloudCompare, trimesh read it).

Vertices ``x y z`` float32 (our world axes: OpenCV axes of frame 0) and, with colours, ``red green blue``
uint8; ``comment`` lines carry provenance (e.g. that the points came from the synthetic predictor).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from geo4d.cameras import check_shape

__all__ = ["write_ply"]


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None,
              comments: Sequence[str] = ()) -> int:
    """Write a binary little-endian PLY point cloud; returns the number of points written.

    Args:
        points: (N, 3) positions; non-finite rows are dropped.
        colors: (N, 3) uint8 RGB, optional.
        comments: header comment lines (one line each).

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_ply(os.path.join(d, "p.ply"), np.array([[0, 0, 1.0], [np.nan, 0, 0]]), np.full((2, 3), 9, np.uint8))
    1
    """
    check_shape(points, (None, 3), "points")
    keep = np.isfinite(points).all(axis=1)
    pts = np.asarray(points[keep], dtype="<f4")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        check_shape(colors, (points.shape[0], 3), "colors")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    rec = np.empty(len(pts), dtype=fields)
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if colors is not None:
        col = np.asarray(colors, dtype=np.uint8)[keep]
        rec["red"], rec["green"], rec["blue"] = col[:, 0], col[:, 1], col[:, 2]
    lines = [c for comment in comments for c in str(comment).splitlines()]
    PlyData([PlyElement.describe(rec, "vertex")], text=False, byte_order="<", comments=lines).write(str(path))
    return len(rec)
