"""A COLMAP text model of a reconstruction, written with pycolmap.

Layout (COLMAP's own: ``colmap gui`` → *File → Import model*, nerfstudio's ``colmap`` data parser,
``pycolmap.Reconstruction(directory / "sparse/0")``)::

    directory/images/frame_00000.png …   the frames (image names in the model are relative to images/)
    directory/sparse/0/cameras.txt       one PINHOLE camera per frame (fx fy cx cy)
    directory/sparse/0/images.txt        cam_from_world per frame (the inverse of world_from_cam)
    directory/sparse/0/points3D.txt      coloured points without tracks (no 2D observations)
    directory/sparse/0/rigs.txt, frames.txt   (COLMAP ≥ 3.12: one trivial rig and frame per image)

COLMAP's camera axes and pixel convention are OpenCV's, as ours, except that COLMAP puts the centre
of the top-left pixel at (0.5, 0.5): ``cx, cy`` are written shifted by +0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from geo4d.cameras import check_shape, invert_pose
from geo4d.formats.common import CORNER_ORIGIN_OFFSET, write_frames

__all__ = ["SPARSE_DIR", "write_colmap"]

#: Where the model lies under the export directory.
SPARSE_DIR = "sparse/0"


def _reconstruction(intrinsics: np.ndarray, world_from_cam: np.ndarray, size: tuple[int, int],
                    names: list[str]) -> pycolmap.Reconstruction:
    """A model with one PINHOLE camera and one registered image per frame (ids = frame index + 1)."""
    H, W = size
    rec = pycolmap.Reconstruction()
    cam_from_world = invert_pose(np.asarray(world_from_cam, np.float64))
    for k, name in enumerate(names):
        K = np.asarray(intrinsics[k], np.float64)
        params = [K[0, 0], K[1, 1], K[0, 2] + CORNER_ORIGIN_OFFSET, K[1, 2] + CORNER_ORIGIN_OFFSET]
        rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=k + 1, model="PINHOLE", width=W, height=H,
                                                        params=params))
        image = pycolmap.Image(name=name, camera_id=k + 1, image_id=k + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(cam_from_world[k, :3, :4]))
    return rec


def write_colmap(directory: str | Path, frames: np.ndarray, intrinsics: np.ndarray, world_from_cam: np.ndarray,
                 points: np.ndarray, colors: np.ndarray) -> dict:
    """Write the frames and a COLMAP text model of them (see the module's layout).

    Args:
        frames: (T, H, W, 3) uint8 RGB; intrinsics: (T, 3, 3) K (our pixel convention);
        world_from_cam: (T, 4, 4) camera-to-world; points: (N, 3) world; colors: (N, 3) uint8.
    Returns:
        ``{"images": T, "points": N, "model": "sparse/0"}``.
    """
    T, H, W = np.shape(frames)[:3]
    check_shape(intrinsics, (T, 3, 3), "intrinsics")
    check_shape(world_from_cam, (T, 4, 4), "world_from_cam")
    check_shape(points, (None, 3), "points")
    check_shape(colors, (np.shape(points)[0], 3), "colors")
    d = Path(directory)
    names = write_frames(d / "images", frames)
    rec = _reconstruction(intrinsics, world_from_cam, (H, W), names)
    for xyz, rgb in zip(np.asarray(points, np.float64), np.asarray(colors, np.uint8)):
        rec.add_point3D(xyz, pycolmap.Track(), rgb)
    model = d / SPARSE_DIR
    model.mkdir(parents=True, exist_ok=True)
    rec.write_text(str(model))
    return {"images": T, "points": int(np.shape(points)[0]), "model": SPARSE_DIR}
