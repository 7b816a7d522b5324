"""Plücker ray maps: building them from cameras (and, see below, recovering cameras from them).

A pixel's ray is the 6-vector ``(d, m)``: ``d`` the unit direction, ``m = c × d`` its moment, with
``c`` the camera centre; both are expressed in a reference frame (for a Geo4D window, the camera
frame of the window's first frame). See :mod:`geo4d.cameras` for axis and pixel conventions.
"""

from __future__ import annotations

import numpy as np

from geo4d.cameras import check_shape, pixel_grid

__all__ = ["plucker_rays"]


def plucker_rays(ref_from_cam: np.ndarray, K: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel Plücker rays of cameras, in the reference frame.

    ``d = normalize(R_ref_from_cam K⁻¹ [u, v, 1]ᵀ)``, ``m = c × d`` with ``c`` = translation of
    ``ref_from_cam`` (the camera centre in the reference frame).

    Args:
        ref_from_cam: (V, 4, 4) camera-to-reference poses.
        K: (V, 3, 3) or (3, 3) intrinsics.
        height, width: image size.

    Returns:
        ray_dir, ray_moment: (V, H, W, 3) each, float64.

    Example:
        >>> d, m = plucker_rays(np.eye(4)[None], np.array([[1., 0, 0], [0, 1, 0], [0, 0, 1]]), 1, 1)
        >>> d[0, 0, 0], m[0, 0, 0]
        (array([0., 0., 1.]), array([0., 0., 0.]))
    """
    check_shape(ref_from_cam, (None, 4, 4), "ref_from_cam")
    V = ref_from_cam.shape[0]
    K = np.asarray(K, dtype=np.float64)
    if K.ndim == 2:
        K = np.broadcast_to(K, (V, 3, 3))
    check_shape(K, (V, 3, 3), "K")
    grid = pixel_grid(height, width)
    pix = np.concatenate([grid, np.ones((height, width, 1))], axis=-1)  # (H,W,3)
    Kinv = np.linalg.inv(K)  # (V,3,3)
    R = ref_from_cam[:, :3, :3]
    c = ref_from_cam[:, :3, 3]
    # d = R K⁻¹ [u, v, 1]ᵀ for every pixel, as one BLAS matmul per frame: pix (H·W,3) @ (R K⁻¹)ᵀ.
    M = np.matmul(R, Kinv)  # (V,3,3)
    d = np.matmul(pix.reshape(1, -1, 3), np.swapaxes(M, -1, -2)).reshape(V, height, width, 3)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    m = np.cross(np.broadcast_to(c[:, None, None, :], d.shape), d)
    return d, m
