"""Plücker ray maps: building them from cameras (and, see below, recovering cameras from them).

A pixel's ray is the 6-vector ``(d, m)``: ``d`` the unit direction, ``m = c × d`` its moment, with
``c`` the camera centre; both are expressed in a reference frame (for a Geo4D window, the camera
frame of the window's first frame). See :mod:`geo4d.cameras` for axis and pixel conventions.
"""

from __future__ import annotations

import numpy as np

from geo4d.cameras import check_shape, pixel_grid

__all__ = ["plucker_rays", "cameras_from_plucker_official"]


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


def cameras_from_plucker_official(ray_dir: np.ndarray, ray_moment: np.ndarray) -> np.ndarray:
    """Cameras from Plücker maps exactly as the released Geo4D inference recovers them.

    1. Keep the central square: ``k = (long − short) // 2`` lines are dropped at both ends of the
       longer side (none when ``k = 0``), then nearest resampling to ``short × short`` (source index
       ``⌊i · n_in / short⌋``; only changes anything when ``long − short`` is odd).
    2. ``d ← d / |d|``; point on each ray ``p = d × m``.
    3. Centre ``c_f``: least squares ``[Σ (I − d dᵀ)] c = Σ (I − d dᵀ) p`` (all kept rays, unweighted).
    4. Rotation relative to frame 0: ``M = Σ d_f d_0ᵀ = U S Vᵀ``,
       ``R_f = U diag(1, 1, sign det(U Vᵀ)) Vᵀ`` (orthogonal Procrustes), so ``R_0 = I``.

    Intrinsics are not recovered on this path (the fusion's :mod:`geo4d.fusion.window_cameras` does).

    Args:
        ray_dir, ray_moment: (V, H, W, 3) direction and moment maps of one window.

    Returns:
        ref_from_cam: (V, 4, 4) ``[[R_f, c_f], [0, 1]]`` — camera-to-reference when the reference is
        camera 0 of the window (the Geo4D setting).

    Example:
        >>> K = np.array([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]])
        >>> poses = np.stack([np.eye(4), np.eye(4)]); poses[1, :3, 3] = [0.5, 0, 0]
        >>> d, m = plucker_rays(poses, K, 12, 16)
        >>> bool(np.allclose(cameras_from_plucker_official(d, m)[1, :3, 3], [0.5, 0.0, 0.0]))
        True
    """
    check_shape(ray_dir, (None, None, None, 3), "ray_dir")
    check_shape(ray_moment, ray_dir.shape, "ray_moment")
    d = np.asarray(ray_dir, dtype=np.float64)
    m = np.asarray(ray_moment, dtype=np.float64)
    V, H, W, _ = d.shape
    short, long_ = min(H, W), max(H, W)
    k = (long_ - short) // 2
    axis = 1 if H > W else 2
    if k > 0:
        sl = [slice(None)] * 4
        sl[axis] = slice(k, long_ - k)
        d, m = d[tuple(sl)], m[tuple(sl)]
    n_in = d.shape[axis]
    if n_in != short:
        idx = np.floor(np.arange(short) * n_in / short).astype(int)
        d, m = np.take(d, idx, axis=axis), np.take(m, idx, axis=axis)
    d = d.reshape(V, -1, 3)
    m = m.reshape(V, -1, 3)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    p = np.cross(d, m)
    proj = np.eye(3) - d[..., :, None] * d[..., None, :]  # (V, N, 3, 3)
    A = proj.sum(axis=1)
    b = np.einsum("vnij,vnj->vi", proj, p)
    out = np.tile(np.eye(4), (V, 1, 1))
    for f in range(V):
        out[f, :3, 3] = np.linalg.lstsq(A[f], b[f], rcond=None)[0]
        U, _, Vt = np.linalg.svd(d[f].T @ d[0])
        S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
        out[f, :3, :3] = U @ S @ Vt
    return out
