"""Points, camera path and camera frusta in one glTF binary (``.glb``), written with trimesh.

glTF's world is y-up (+y up, +z toward the viewer, right-handed); ours is OpenCV's (y down, z forward).
Every position is converted: ``gltf = diag(1, -1, -1) · ours`` (a 180° turn about x), so a glTF
viewer shows the scene upright, as frame 0's camera saw it. Meshes (and the nodes holding them):

* ``points`` — mode POINTS, the coloured cloud (``COLOR_0``);
* ``camera_path`` — mode LINES, the camera centres joined in frame order (2 (T-1) vertices);
* ``camera_frusta`` — mode LINES, per frame 8 segments (16 vertices): apex → the 4 image corners at
  ``frustum_depth``, then the rectangle through them (corners in the order top-left, top-right,
  bottom-right, bottom-left of the image). Frame ``k``'s vertices are ``16 k … 16 k + 15``; vertex
  ``16 k`` is its camera centre.

The scene's ``extras`` carry provenance (e.g. that the reconstruction came from the synthetic predictor).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import trimesh
from trimesh.path.entities import Line

from geo4d.cameras import check_shape, transform_points
from geo4d.formats.common import OPENGL_FROM_OPENCV

__all__ = ["GLTF_FROM_OPENCV", "frustum_segments", "default_frustum_depth", "write_glb"]

#: World points, ours → glTF's y-up axes.
GLTF_FROM_OPENCV = OPENGL_FROM_OPENCV[:3, :3]


def frustum_segments(intrinsics: np.ndarray, world_from_cam: np.ndarray, size: tuple[int, int],
                     depth: float) -> np.ndarray:
    """(T, 8, 2, 3) world segments of each camera's frustum (our axes): 4 apex → corner, then the
    4 edges of the image rectangle at z = ``depth``; ``size`` = (H, W), corners at the image's outer
    edges (pixel centres ± 0.5).

    >>> K = np.array([[[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]]])
    >>> s = frustum_segments(K, np.eye(4)[None], (2, 2), 2.0)
    >>> s.shape, s[0, 0].tolist()
    ((1, 8, 2, 3), [[0.0, 0.0, 0.0], [-1.0, -1.0, 2.0]])
    """
    T = np.shape(intrinsics)[0]
    check_shape(intrinsics, (T, 3, 3), "intrinsics")
    check_shape(world_from_cam, (T, 4, 4), "world_from_cam")
    H, W = size
    uv = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]])
    K = np.asarray(intrinsics, np.float64)
    x = (uv[None, :, 0] - K[:, None, 0, 2]) / K[:, None, 0, 0] * depth
    y = (uv[None, :, 1] - K[:, None, 1, 2]) / K[:, None, 1, 1] * depth
    corners_cam = np.stack([x, y, np.full_like(x, depth)], axis=-1)  # (T, 4, 3)
    corners = transform_points(np.asarray(world_from_cam, np.float64), corners_cam)
    apex = np.broadcast_to(np.asarray(world_from_cam, np.float64)[:, None, :3, 3], corners.shape)
    rays = np.stack([apex, corners], axis=2)
    rim = np.stack([corners, np.roll(corners, -1, axis=1)], axis=2)
    return np.concatenate([rays, rim], axis=1)


def default_frustum_depth(points: np.ndarray, world_from_cam: np.ndarray) -> float:
    """A frustum size that suits the scene: 10 % of the median distance of the points from the first
    camera (0.1 without points).

    >>> default_frustum_depth(np.array([[0, 0, 2.0], [0, 0, 4.0], [0, 0, 6.0]]), np.eye(4)[None])
    0.4
    """
    if len(points) == 0:
        return 0.1
    dist = np.linalg.norm(np.asarray(points, np.float64) - np.asarray(world_from_cam)[0, :3, 3], axis=1)
    return float(0.1 * np.median(dist)) or 0.1


def _lines(segments: np.ndarray) -> trimesh.path.Path3D:
    """A Path3D of independent segments (S, 2, 3), vertices kept in order (no merging)."""
    verts = np.asarray(segments, np.float64).reshape(-1, 3) @ GLTF_FROM_OPENCV.T
    return trimesh.path.Path3D(entities=[Line([2 * i, 2 * i + 1]) for i in range(len(segments))],
                               vertices=verts, process=False)


def write_glb(path: str | Path, points: np.ndarray, colors: np.ndarray, intrinsics: np.ndarray,
              world_from_cam: np.ndarray, size: tuple[int, int], frustum_depth: float | None = None,
              extras: Mapping | None = None) -> dict:
    """Write the scene described in the module docstring.

    Args:
        points: (N, 3) world (our axes); colors: (N, 3) uint8; intrinsics: (T, 3, 3);
        world_from_cam: (T, 4, 4); size: (H, W); frustum_depth: None → :func:`default_frustum_depth`.
    Returns:
        ``{"points": N, "cameras": T, "frustum_depth": d}``.
    """
    check_shape(points, (None, 3), "points")
    check_shape(colors, (np.shape(points)[0], 3), "colors")
    depth = default_frustum_depth(points, world_from_cam) if frustum_depth is None else float(frustum_depth)
    scene = trimesh.Scene()
    if len(points):
        cloud = trimesh.PointCloud(np.asarray(points, np.float64) @ GLTF_FROM_OPENCV.T, colors=np.asarray(colors, np.uint8))
        scene.add_geometry(cloud, geom_name="points", node_name="points")
    centres = np.asarray(world_from_cam, np.float64)[:, :3, 3]
    if len(centres) > 1:
        scene.add_geometry(_lines(np.stack([centres[:-1], centres[1:]], axis=1)), geom_name="camera_path",
                           node_name="camera_path")
    frusta = frustum_segments(intrinsics, world_from_cam, size, depth).reshape(-1, 2, 3)
    scene.add_geometry(_lines(frusta), geom_name="camera_frusta", node_name="camera_frusta")
    scene.metadata.update({"axes": "glTF y-up: (x, -y, -z) of the reconstruction's OpenCV world axes",
                           **dict(extras or {})})
    Path(path).write_bytes(scene.export(file_type="glb"))
    return {"points": int(len(points)), "cameras": int(len(centres)), "frustum_depth": depth}
