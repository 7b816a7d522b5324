"""What several formats share: frame file names, frames as PNG, 16-bit depth quantisation, axis changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geo4d.cameras import check_shape

__all__ = ["CORNER_ORIGIN_OFFSET", "OPENGL_FROM_OPENCV", "UINT16_MAX", "frame_name", "write_frames", "depth_scale",
           "quantise_depth", "write_depth_png"]

#: Camera axes OpenCV (x right, y down, z forward) → OpenGL/Blender (x right, y up, z back):
#: ``world_from_cam_gl = world_from_cam_cv @ OPENGL_FROM_OPENCV`` (the y and z columns negated);
#: applied on the left it turns world points the same way (a 180° rotation about x).
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
#: Added to our principal point for tools whose pixel coordinates start at the image's top-left corner
#: (the centre of the top-left pixel at (0.5, 0.5): COLMAP, nerfstudio); ours puts that centre at (0, 0).
CORNER_ORIGIN_OFFSET = 0.5
#: Largest 16-bit value; 0 is reserved for "invalid".
UINT16_MAX = 65535


def frame_name(k: int, suffix: str = ".png") -> str:
    """The file name of frame ``k``.

    >>> frame_name(7)
    'frame_00007.png'
    """
    return f"frame_{k:05d}{suffix}"


def write_frames(directory: str | Path, frames: np.ndarray) -> list[str]:
    """Write (T, H, W, 3) uint8 RGB frames as ``directory/frame_00000.png`` …; returns the file names."""
    from PIL import Image

    check_shape(frames, (None, None, None, 3), "frames")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    names = [frame_name(k) for k in range(frames.shape[0])]
    for k, name in enumerate(names):
        Image.fromarray(np.asarray(frames[k], dtype=np.uint8)).save(d / name, format="PNG", compress_level=3)
    return names


def depth_scale(max_depth: float) -> float:
    """The scale ``s`` of 16-bit depth (``value = round(depth · s)``) that puts ``max_depth`` at 65535.

    >>> depth_scale(2.0)
    32767.5
    >>> depth_scale(0.0)  # no valid depth: any scale will do
    1.0
    """
    return UINT16_MAX / float(max_depth) if max_depth > 0 and np.isfinite(max_depth) else 1.0


def quantise_depth(depth: np.ndarray, valid: np.ndarray, scale: float) -> np.ndarray:
    """(…) depth → uint16 ``round(depth · scale)``, 0 where not valid; valid depths are kept ≥ 1 (never
    read as invalid) and must fit 65535.

    >>> quantise_depth(np.array([0.5, 1.0, 1e-6]), np.array([True, False, True]), 1000.0).tolist()
    [500, 0, 1]
    """
    d = np.asarray(depth, dtype=np.float64)
    ok = np.asarray(valid, bool) & np.isfinite(d) & (d > 0)
    v = np.where(ok, np.rint(np.where(ok, d, 0.0) * scale), 0.0)
    if v.max(initial=0) > UINT16_MAX:
        raise ValueError(f"depth: {d[ok].max():.4g} exceeds the 16-bit range at scale {scale:g}")
    v[ok] = np.maximum(v[ok], 1.0)
    return v.astype(np.uint16)


def write_depth_png(path: str | Path, depth_u16: np.ndarray) -> None:
    """Write (H, W) uint16 as a single-channel 16-bit PNG (PIL mode ``I;16``)."""
    from PIL import Image

    check_shape(depth_u16, (None, None), "depth")
    Image.fromarray(np.asarray(depth_u16, dtype=np.uint16)).save(path, format="PNG", compress_level=3)
