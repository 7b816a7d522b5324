"""Cameras of one window, recovered in closed form from its point maps and its Plücker ray maps.

Everything here lives in a window's reference frame (the camera of the window's first frame) and in
the window's own units; :mod:`geo4d.fusion.solver` puts the windows together.

* :func:`fit_intrinsics` — pinhole ``(f, cx, cy)`` from camera-frame directions by linear least
  squares: ``u = f·X/Z + cx``, ``v = f·Y/Z + cy``.
* :func:`intrinsics_from_pointmap` — the same on a window's first point map, optionally with the
  unknown z offset of the point map (``X/(Z + δ)``), solved as a 1-D nonlinear problem in ``δ`` with
  ``(f, cx, cy)`` eliminated in closed form (variable projection; ``scipy.optimize.least_squares``).
* :func:`plucker_cameras` — rotation of every frame by orthogonal Procrustes of its unit ray
  directions against the first frame's, camera centre by least squares on the moments
  (``m = c × d`` ⇒ ``(Σ I − d dᵀ) c = Σ d × m``), intrinsics from the first frame's directions.
* :func:`pnp` — camera pose (and optionally focal) of many frames at once from their point maps:
  linear DLT in normalised image coordinates, then Levenberg-Marquardt on the reprojection error.

The batched PnP and the Plücker recovery are written by hand: OpenCV's PnP is per frame, RANSAC
based and not installed; none of the maintained libraries recovers cameras from Plücker maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geo4d.cameras import check_shape
from geo4d.fusion.lie import project_to_rotation, so3_exp

__all__ = [
    "sample_pixels",
    "fit_intrinsics",
    "intrinsics_from_pointmap",
    "PluckerCameras",
    "plucker_cameras",
    "pnp",
]


def sample_pixels(height: int, width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A regular grid of about ``n`` pixels: flat indices (m,) into ``H·W`` and their ``(u, v)`` (m, 2)."""
    step = max(1, int(round(np.sqrt(height * width / float(n)))))
    v0 = (height - 1 - step * ((height - 1) // step)) // 2
    u0 = (width - 1 - step * ((width - 1) // step)) // 2
    vs = np.arange(v0, height, step)
    us = np.arange(u0, width, step)
    vv, uu = np.meshgrid(vs, us, indexing="ij")
    flat = (vv * width + uu).reshape(-1)
    uv = np.stack([uu.reshape(-1), vv.reshape(-1)], axis=-1).astype(np.float64)
    return flat, uv


def fit_intrinsics(
    x: np.ndarray, y: np.ndarray, uv: np.ndarray, w: np.ndarray, pp: tuple[float, float] | None = None
) -> tuple[float, float, float, float]:
    """Weighted least squares ``u = f x + cx``, ``v = f y + cy`` (square pixels, no skew).

    Args:
        x, y: (n,) normalised image coordinates ``X/Z``, ``Y/Z`` of camera-frame directions.
        uv: (n, 2) their pixels.
        w: (n,) weights ≥ 0.
        pp: fixed principal point ``(cx, cy)``, or None to estimate it.

    Returns:
        ``(f, cx, cy, rms)`` with ``rms`` the weighted RMS residual in pixels (nan if no weight).
    """
    w = np.asarray(w, dtype=np.float64)
    ws = w.sum()
    if not ws > 0:
        return np.nan, np.nan, np.nan, np.nan
    u, v = uv[:, 0], uv[:, 1]
    if pp is None:
        # Normal equations of the 3-parameter problem (f, cx, cy).
        Sx, Sy = (w * x).sum(), (w * y).sum()
        Sxx = (w * (x * x + y * y)).sum()
        Su, Sv = (w * u).sum(), (w * v).sum()
        Sxu = (w * (x * u + y * v)).sum()
        A = np.array([[Sxx, Sx, Sy], [Sx, ws, 0.0], [Sy, 0.0, ws]])
        b = np.array([Sxu, Su, Sv])
        try:
            f, cx, cy = np.linalg.solve(A, b)
        except np.linalg.LinAlgError:
            return np.nan, np.nan, np.nan, np.nan
    else:
        cx, cy = pp
        den = (w * (x * x + y * y)).sum()
        f = (w * (x * (u - cx) + y * (v - cy))).sum() / den if den > 0 else np.nan
    res2 = (u - f * x - cx) ** 2 + (v - f * y - cy) ** 2
    rms = float(np.sqrt((w * res2).sum() / ws))
    return float(f), float(cx), float(cy), rms


def intrinsics_from_pointmap(
    points: np.ndarray,
    uv: np.ndarray,
    w: np.ndarray,
    *,
    z_offset: bool = False,
    pp: tuple[float, float] | None = None,
) -> tuple[float, float, float, float, float]:
    """Intrinsics (and z offset) from a point map whose camera is the reference camera.

    Model: ``u = f X/(Z + δ) + cx``, ``v = f Y/(Z + δ) + cy`` with ``δ = 0`` unless ``z_offset``.
    For a given ``δ`` the problem is linear in ``(f, cx, cy)`` (:func:`fit_intrinsics`); ``δ`` is
    found by bounded least squares on the resulting pixel residuals (``Z + δ > 0`` for every point).

    Args:
        points: (n, 3) points of the window's first frame (window units).
        uv: (n, 2) their pixels.
        w: (n,) weights (0 = invalid).

    Returns:
        ``(f, cx, cy, δ, rms_pixels)``.

    Example:
        >>> uv = np.stack(np.meshgrid(np.arange(8.0), np.arange(6.0)), -1).reshape(-1, 2)
        >>> z = 2.0 + uv[:, 0] / 8
        >>> P = np.stack([(uv[:, 0] - 3.5) * z / 10, (uv[:, 1] - 2.5) * z / 10, z - 1.5], -1)
        >>> f, cx, cy, d, _ = intrinsics_from_pointmap(P, uv, np.ones(48), z_offset=True)
        >>> np.round([f, cx, cy, d], 4).tolist()
        [10.0, 3.5, 2.5, 1.5]
    """
    check_shape(points, (None, 3), "points")
    P = np.asarray(points, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    X, Y, Z = P[:, 0], P[:, 1], P[:, 2]

    def solve(delta: float):
        zz = Z + delta
        ok = (w > 0) & (zz > 1e-12)
        ww = np.where(ok, w, 0.0)
        zz = np.where(ok, zz, 1.0)
        return fit_intrinsics(X / zz, Y / zz, uv, ww, pp), zz, ww

    if not z_offset:
        (f, cx, cy, rms), _, _ = solve(0.0)
        return f, cx, cy, 0.0, rms

    from scipy.optimize import least_squares

    valid = w > 0
    if valid.sum() < 8:
        return np.nan, np.nan, np.nan, 0.0, np.nan
    zmin = float(Z[valid].min())
    zspan = float(np.percentile(Z[valid], 95) - zmin) or 1.0
    lower = -zmin + 1e-4 * zspan
    sw = np.sqrt(np.where(valid, w, 0.0) / w[valid].sum())

    def residuals(p: np.ndarray) -> np.ndarray:
        (f, cx, cy, _), zz, ww = solve(float(p[0]))
        if not np.isfinite(f):
            return np.full(2 * len(Z), 1e3)
        ru = (uv[:, 0] - f * X / zz - cx) * sw
        rv = (uv[:, 1] - f * Y / zz - cy) * sw
        return np.concatenate([ru, rv])

    best = None
    # A few starts across the plausible range (the 1-D cost can be flat far from the answer).
    for x0 in (max(0.0, lower + 0.05 * zspan), lower + 0.5 * zspan, lower + 2.0 * zspan):
        sol = least_squares(residuals, x0=[x0], bounds=([lower], [np.inf]), method="trf", xtol=1e-12, ftol=1e-12)
        if best is None or sol.cost < best.cost:
            best = sol
    delta = float(best.x[0])
    (f, cx, cy, rms), _, _ = solve(delta)
    return f, cx, cy, delta, rms


@dataclass
class PluckerCameras:
    """Cameras of one window recovered from its Plücker maps (window frame, moment units).

    Attributes:
        ref_from_cam_R: (V, 3, 3) rotations; frame 0 is the identity by construction.
        centres: (V, 3) camera centres in moment units (the window's unknown ray scale).
        focal, cx, cy: (V,) intrinsics fitted to each frame's de-rotated directions.
        rot_rms: (V,) RMS angle (radians) between the frame's directions and the rotated first-frame
            directions — how well one rotation explains the ray map.
        centre_rms: (V,) RMS of ``|c × d − m|`` relative to the RMS moment — how well one centre
            explains the moments.
        intr_rms: (V,) RMS pixel residual of the intrinsics fit.
    """

    ref_from_cam_R: np.ndarray
    centres: np.ndarray
    focal: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    rot_rms: np.ndarray
    centre_rms: np.ndarray
    intr_rms: np.ndarray


def _homography_cameras(d: np.ndarray, good: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, ``d ∝ H [u, v, 1]ᵀ`` by DLT (Hartley-normalised pixels), then ``H⁻¹ = K Rᵀ`` by RQ.

    Returns ``(R (V,3,3), K (V,3,3))`` — rotation and intrinsics of every frame on its own.
    """
    from scipy.linalg import rq

    V = d.shape[0]
    mu = uv.mean(0)
    sc = np.sqrt(2.0) / max(np.sqrt(((uv - mu) ** 2).sum(-1)).mean(), 1e-12)
    Tn = np.array([[sc, 0, -sc * mu[0]], [0, sc, -sc * mu[1]], [0, 0, 1.0]])
    p = np.concatenate([(uv - mu) * sc, np.ones((len(uv), 1))], axis=-1)  # (n,3)
    Rs = np.tile(np.eye(3), (V, 1, 1))
    Ks = np.tile(np.eye(3), (V, 1, 1))
    for k in range(V):
        g = good[k]
        dx, dy, dz = d[k, g, 0:1], d[k, g, 1:2], d[k, g, 2:3]
        pk = p[g]
        z = np.zeros_like(pk)
        # d × (H p) = 0: rows for h = (h1, h2, h3) (rows of H).
        A1 = np.concatenate([z, -dz * pk, dy * pk], axis=1)
        A2 = np.concatenate([dz * pk, z, -dx * pk], axis=1)
        A = np.concatenate([A1, A2], axis=0)
        _, vecs = np.linalg.eigh(A.T @ A)
        Hn = vecs[:, 0].reshape(3, 3)
        if ((pk @ Hn.T) * d[k, g]).sum() < 0:
            Hn = -Hn
        M = np.linalg.inv(Hn @ Tn)  # ∝ K Rᵀ
        Kr, Qr = rq(M)
        D = np.diag(np.sign(np.diag(Kr)))
        K, Rt = Kr @ D, D @ Qr
        if np.linalg.det(Rt) < 0:
            K, Rt = -K, -Rt
        Ks[k] = K / K[2, 2]
        Rs[k] = Rt.T
    return Rs, Ks


def plucker_cameras(
    ray_dir: np.ndarray, ray_moment: np.ndarray, pp: tuple[float, float] | None = None,
    per_frame_intrinsics: bool = False,
) -> PluckerCameras:
    """Recover a window's cameras from its Plücker maps.

    For each frame ``k`` (``d`` unit directions, ``m`` moments, all pixels):

    * rotation: ``R_k = argmin_R Σ |d_k − R d_0|²`` (Procrustes: ``R = U diag(1,1,±1) Vᵀ`` of
      ``Σ d_k d_0ᵀ``); the first camera is the window's reference, so ``R_0 = I``;
    * centre: ``argmin_c Σ |c × d − m|²`` ⇔ ``(Σ_p I − d dᵀ) c = Σ_p d × m``;
    * intrinsics: :func:`fit_intrinsics` on ``R_kᵀ d_k``.

    Args:
        ray_dir: (V, H, W, 3) directions (normalised here).
        ray_moment: (V, H, W, 3) moments.
        pp: fixed principal point, or None to estimate it.
        per_frame_intrinsics: the frames may have different intrinsics (zoom): rotation and
            intrinsics of each frame come from its own ray homography (``d ∝ R K⁻¹ [u, v, 1]ᵀ``,
            DLT + RQ decomposition) instead of Procrustes against the first frame.
    """
    check_shape(ray_dir, (None, None, None, 3), "ray_dir")
    check_shape(ray_moment, ray_dir.shape, "ray_moment")
    V, H, W, _ = ray_dir.shape
    d = np.asarray(ray_dir, dtype=np.float64).reshape(V, H * W, 3)
    m = np.asarray(ray_moment, dtype=np.float64).reshape(V, H * W, 3)
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    good = (norm[..., 0] > 1e-8) & np.isfinite(norm[..., 0])
    d = np.where(good[..., None], d / np.where(norm > 1e-8, norm, 1.0), 0.0)
    gw = good.astype(np.float64)

    # Rotations by Procrustes against frame 0 (pixel-aligned rays): M_k = Σ_p d_k d_0ᵀ.
    both = gw * gw[:1]
    M = np.matmul(np.swapaxes(d * both[..., None], 1, 2), d[0][None])
    R = project_to_rotation(M)
    R[0] = np.eye(3)
    if per_frame_intrinsics:
        from geo4d.cameras import pixel_grid as _grid

        R, _ = _homography_cameras(d, good, _grid(H, W).reshape(-1, 2))
        # The first camera is the window's reference: express the others relative to it.
        R = np.matmul(np.swapaxes(R[0], -1, -2)[None], R)
        R[0] = np.eye(3)
    d0r = np.matmul(d[0][None], np.swapaxes(R, 1, 2))  # rows: R_k d_0
    cosang = np.clip((d * d0r).sum(-1), -1.0, 1.0)
    rot_rms = np.sqrt((both * np.arccos(cosang) ** 2).sum(1) / np.maximum(both.sum(1), 1.0))

    # Centres from the moments: (Σ I − d dᵀ) c = Σ d × m.
    n = gw.sum(1)
    A = n[:, None, None] * np.eye(3) - np.matmul(np.swapaxes(d * gw[..., None], 1, 2), d)
    dxm = np.cross(d, m)
    b = (gw[..., None] * dxm).sum(1)
    c = np.linalg.solve(A + 1e-12 * np.eye(3), b[..., None])[..., 0]
    # |c × d − m|² = |c|² − (c·d)² − 2 c·(d × m) + |m|² for unit d (m ⟂ d).
    cd = np.matmul(d, c[:, :, None])[..., 0]
    res2 = (c * c).sum(-1)[:, None] - cd**2 - 2 * np.matmul(dxm, c[:, :, None])[..., 0] + (m * m).sum(-1)
    mnorm = np.sqrt((gw * (m**2).sum(-1)).sum(1) / np.maximum(n, 1.0))
    centre_rms = np.sqrt(np.maximum((gw * res2).sum(1), 0.0) / np.maximum(n, 1.0)) / np.maximum(mnorm, 1e-12)

    # Intrinsics from de-rotated directions.
    from geo4d.cameras import pixel_grid

    uv = pixel_grid(H, W).reshape(-1, 2)
    dc = np.matmul(d, R)  # rows: R_kᵀ d_k
    focal, cx, cy, intr = (np.full(V, np.nan) for _ in range(4))
    for k in range(V):
        z = dc[k, :, 2]
        ok = good[k] & (z > 1e-3)
        zz = np.where(ok, z, 1.0)
        focal[k], cx[k], cy[k], intr[k] = fit_intrinsics(dc[k, :, 0] / zz, dc[k, :, 1] / zz, uv, ok.astype(float), pp)
    return PluckerCameras(R, c, focal, cx, cy, rot_rms, centre_rms, intr)


def pnp(
    points: np.ndarray,
    uv: np.ndarray,
    weights: np.ndarray,
    focal: np.ndarray,
    cx: float,
    cy: float,
    *,
    estimate_focal: bool = False,
    iterations: int = 20,
) -> dict[str, np.ndarray]:
    """Poses of B cameras from pixel-aligned 3-D points (batched PnP).

    Finds ``ref_from_cam = (R, c)`` with ``Rᵀ (P − c) ∝ K⁻¹ [u, v, 1]ᵀ``: a DLT in normalised image
    coordinates (Hartley-normalised points, smallest eigenvector of the 12×12 normal matrix,
    projected to a rotation; where the points are nearly planar, also a homography DLT in their
    plane, keeping the start that reprojects better), then Levenberg-Marquardt on the weighted reprojection error with a
    Huber loss (optionally with the focal length free).

    Args:
        points: (B, n, 3) points in the reference frame.
        uv: (n, 2) pixels of the points (the same sample for all B).
        weights: (B, n) ≥ 0 (0 = invalid).
        focal: (B,) focal lengths (initial values when ``estimate_focal``).
        cx, cy: principal point.
        estimate_focal: also refine ``log f`` per camera.

    Returns:
        dict with ``R`` (B,3,3), ``c`` (B,3), ``focal`` (B,), ``rms`` (B,) RMS reprojection error in
        pixels (nan where a camera could not be solved), ``depth`` (B, n) camera-frame z of the points,
        ``iterations`` (LM iterations run).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> uv = rng.uniform(0, 64, size=(50, 2)); z = rng.uniform(2, 5, 50)
        >>> P = np.stack([(uv[:, 0] - 32) * z / 50, (uv[:, 1] - 32) * z / 50, z], -1)
        >>> out = pnp(P[None], uv, np.ones((1, 50)), np.array([50.0]), 32.0, 32.0)
        >>> bool(np.allclose(out["R"][0], np.eye(3), atol=1e-8)), bool(np.allclose(out["c"][0], 0, atol=1e-8))
        (True, True)
    """
    check_shape(points, (None, None, 3), "points")
    B, n, _ = points.shape
    check_shape(uv, (n, 2), "uv")
    check_shape(weights, (B, n), "weights")
    P = np.asarray(points, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    f = np.broadcast_to(np.asarray(focal, dtype=np.float64), (B,)).copy()
    ok = (w > 0).sum(1) >= 6
    ws = np.maximum(w.sum(1), 1e-300)
    u_n, v_n = uv[None, :, 0] - cx, uv[None, :, 1] - cy
    R, c = _pnp_dlt(P, uv, w, ws, f, cx, cy, ok)
    _planar_starts(P, uv, w, ws, f, cx, cy, ok, R, c)
    Z, zs, front, r = _reprojection(P, R, c, f, u_n, v_n)
    e0 = np.sqrt(np.where(front, (r**2).sum(-1), 0.0))
    active = ok & (np.sqrt((w * e0**2).sum(-1) / ws) * f >= 1e-4)
    damp = np.full(B, 1e-4)
    n_iter = 0
    for _ in range(iterations):
        if not active.any():
            break
        n_iter += 1
        wr = _huber_weights(r, w, front)
        J = _reprojection_jacobian(Z, zs, R, u_n / f[:, None], v_n / f[:, None], estimate_focal)
        c0 = _cost(r, front, wr)
        R, c, f, damp, pending, moved, gain = _lm_attempts(P, R, c, f, u_n, v_n, J, r, wr, c0, damp, active,
                                                           estimate_focal)
        # Converged: tiny step, negligible gain, or already at float32 precision (1e-4 px RMS).
        tiny = np.sqrt(c0 / np.maximum(wr.sum(-1), 1e-300)) * f < 1e-4
        stuck = pending & (damp > 1e8)
        active &= ~stuck & ~tiny & (pending | ((moved > 1e-12) & (gain > 1e-10 * c0)))
        Z, zs, front, r = _reprojection(P, R, c, f, u_n, v_n)
    e2 = np.where(front, (r**2).sum(-1), 0.0)
    rms = np.sqrt((w * e2).sum(-1) / ws) * f
    rms = np.where(ok, rms, np.nan)
    return {"R": R, "c": c, "focal": f, "rms": rms, "depth": Z[..., 2], "iterations": n_iter}


def _pnp_dlt(P: np.ndarray, uv: np.ndarray, w: np.ndarray, ws: np.ndarray, f: np.ndarray, cx: float, cy: float,
             ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Initial ``(R (B,3,3), c (B,3))`` by a DLT in normalised image coordinates.

    With Hartley-normalised points ``X̃ = [(P − μ)/s, 1]`` and ``x = (u − cx)/f``, ``y = (v − cy)/f``,
    the 3×4 matrix ``M`` minimising ``Σ w (‖M₁X̃ − x M₃X̃‖² + ‖M₂X̃ − y M₃X̃‖²)`` is the smallest
    eigenvector of a 12×12 normal matrix; its left 3×3 block, projected to a rotation, is ``Rᵀ``.
    """
    B, n, _ = P.shape
    mu = np.einsum("bn,bni->bi", w, P) / ws[:, None]
    spread = np.sqrt(np.einsum("bn,bn->b", w, ((P - mu[:, None]) ** 2).sum(-1)) / ws / 3.0)
    spread = np.where(spread > 0, spread, 1.0)
    Pn = (P - mu[:, None]) / spread[:, None, None]
    Xh = np.concatenate([Pn, np.ones((B, n, 1))], axis=-1)  # (B,n,4)
    x = (uv[None, :, 0] - cx) / f[:, None]
    y = (uv[None, :, 1] - cy) / f[:, None]
    S0 = np.einsum("bn,bni,bnj->bij", w, Xh, Xh)
    Sx = np.einsum("bn,bni,bnj->bij", w * x, Xh, Xh)
    Sy = np.einsum("bn,bni,bnj->bij", w * y, Xh, Xh)
    Sr = np.einsum("bn,bni,bnj->bij", w * (x * x + y * y), Xh, Xh)
    N = np.zeros((B, 12, 12))
    N[:, 0:4, 0:4] = S0
    N[:, 4:8, 4:8] = S0
    N[:, 0:4, 8:12] = -Sx
    N[:, 8:12, 0:4] = -Sx
    N[:, 4:8, 8:12] = -Sy
    N[:, 8:12, 4:8] = -Sy
    N[:, 8:12, 8:12] = Sr
    N[~ok] = np.eye(12)
    _, vecs = np.linalg.eigh(N)
    Mx = vecs[:, :, 0].reshape(B, 3, 4)
    flip = np.linalg.det(Mx[:, :, :3]) < 0
    Mx[flip] *= -1.0
    U, S, Vt = np.linalg.svd(Mx[:, :, :3])
    Rt = U @ Vt  # cam_from_ref rotation (det +1 since det B > 0)
    lam = S.mean(-1)
    lam = np.where(lam > 0, lam, 1.0)
    R = np.swapaxes(Rt, -1, -2)
    c_n = -np.einsum("bij,bj->bi", R, Mx[:, :, 3]) / lam[:, None]
    return R, mu + spread[:, None] * c_n


def _planar_starts(P: np.ndarray, uv: np.ndarray, w: np.ndarray, ws: np.ndarray, f: np.ndarray, cx: float, cy: float,
                   ok: np.ndarray, R: np.ndarray, c: np.ndarray) -> None:
    """Points (nearly) on a plane (e.g. only the ground within the point map's range) leave the
    general DLT degenerate: for those cameras also solve the plane's homography (:func:`_pnp_planar`)
    and replace ``R`` (B,3,3), ``c`` (B,3) in place where it reprojects better."""
    flat = np.flatnonzero(ok & _nearly_planar(P, w, ws))
    if not len(flat):
        return
    u_n, v_n = uv[None, :, 0] - cx, uv[None, :, 1] - cy
    Rp, cp = _pnp_planar(P[flat], uv, w[flat], ws[flat], f[flat], cx, cy)
    e_p = _start_error(P[flat], Rp, cp, f[flat], u_n, v_n, w[flat], ws[flat])
    better = e_p < _start_error(P[flat], R[flat], c[flat], f[flat], u_n, v_n, w[flat], ws[flat])
    R[flat[better]], c[flat[better]] = Rp[better], cp[better]


def _nearly_planar(P: np.ndarray, w: np.ndarray, ws: np.ndarray, ratio: float = 1e-4) -> np.ndarray:
    """(B,) whether the weighted points (B,n,3) are nearly planar: the smallest eigenvalue of their
    covariance is below ``ratio`` times the largest (thickness below 1 % of the extent)."""
    mu = np.einsum("bn,bni->bi", w, P) / ws[:, None]
    D = P - mu[:, None]
    ev = np.linalg.eigvalsh(np.matmul(np.swapaxes(D * w[..., None], -1, -2), D) / ws[:, None, None])
    return ev[:, 0] < ratio * np.maximum(ev[:, 2], 1e-300)


def _pnp_planar(P: np.ndarray, uv: np.ndarray, w: np.ndarray, ws: np.ndarray, f: np.ndarray, cx: float,
                cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Initial ``(R (B,3,3), c (B,3))`` of cameras seeing points on a plane, by a homography DLT.

    In the points' principal plane (centroid ``μ``, in-plane axes ``e₁, e₂`` of the weighted
    covariance, scale ``s``), ``P = μ + s (a e₁ + b e₂)`` and ``[x, y, 1]ᵀ ∝ H [a, b, 1]ᵀ`` with
    ``H = λ [Rᵀe₁, Rᵀe₂, Rᵀ(μ − c)/s]``: ``H`` is the smallest eigenvector of a 9×9 normal matrix,
    its sign makes the centroid's depth positive, ``λ`` is the mean norm of its first two columns.
    Written by hand: NumPy/SciPy have no (batched) planar pose solver.
    """
    B, n, _ = P.shape
    mu = np.einsum("bn,bni->bi", w, P) / ws[:, None]
    D = P - mu[:, None]
    evals, E = np.linalg.eigh(np.matmul(np.swapaxes(D * w[..., None], -1, -2), D) / ws[:, None, None])
    e1, e2 = E[..., 2], E[..., 1]
    sc = np.sqrt(np.maximum(evals[:, 2], 1e-300))
    a, b = np.einsum("bni,bi->bn", D, e1) / sc[:, None], np.einsum("bni,bi->bn", D, e2) / sc[:, None]
    x = (uv[None, :, 0] - cx) / f[:, None]
    y = (uv[None, :, 1] - cy) / f[:, None]
    one, zero = np.ones_like(a), np.zeros_like(a)
    A1 = np.stack([a, b, one, zero, zero, zero, -x * a, -x * b, -x], -1)  # (B,n,9)
    A2 = np.stack([zero, zero, zero, a, b, one, -y * a, -y * b, -y], -1)
    N = np.matmul(np.swapaxes(A1 * w[..., None], -1, -2), A1) + np.matmul(np.swapaxes(A2 * w[..., None], -1, -2), A2)
    Hm = np.linalg.eigh(N)[1][:, :, 0].reshape(B, 3, 3)
    Hm *= np.where(Hm[:, 2, 2] < 0, -1.0, 1.0)[:, None, None]
    lam = 0.5 * (np.linalg.norm(Hm[:, :, 0], axis=-1) + np.linalg.norm(Hm[:, :, 1], axis=-1))
    lam = np.where(lam > 0, lam, 1.0)
    r1, r2 = Hm[:, :, 0] / lam[:, None], Hm[:, :, 1] / lam[:, None]
    U, _, Vt = np.linalg.svd(np.stack([r1, r2, np.cross(r1, r2)], -1))
    basis = np.stack([e1, e2, np.cross(e1, e2)], -1)  # (B,3,3) columns e₁, e₂, e₁×e₂
    Rt = (U @ Vt) @ np.swapaxes(basis, -1, -2)  # cam_from_ref
    R = np.swapaxes(Rt, -1, -2)
    return R, mu - sc[:, None] * np.einsum("bij,bj->bi", R, Hm[:, :, 2] / lam[:, None])


def _start_error(P: np.ndarray, R: np.ndarray, c: np.ndarray, f: np.ndarray, u_n: np.ndarray, v_n: np.ndarray,
                 w: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """(B,) weighted mean squared reprojection error of a starting pose (normalised units, each point
    capped at 1; a point behind the camera counts 1)."""
    _, _, front, r = _reprojection(P, R, c, f, u_n, v_n)
    e = np.where(front, np.minimum((r**2).sum(-1), 1.0), 1.0)
    return (w * e).sum(-1) / ws


def _reprojection(P: np.ndarray, R: np.ndarray, c: np.ndarray, f: np.ndarray, u_n: np.ndarray, v_n: np.ndarray):
    """Camera-frame points ``Z = Rᵀ(P − c)`` (B,n,3), their safe depths, in-front mask, and the
    residuals ``r = (Z_x/Z_z − u_n/f, Z_y/Z_z − v_n/f)`` (B,n,2) in normalised units."""
    Z = np.matmul(P - c[:, None, :], R)  # rows: Rᵀ (P − c)
    zz = Z[..., 2]
    front = zz > 1e-12
    zs = np.where(front, zz, 1.0)
    r = np.stack([Z[..., 0] / zs - u_n / f[:, None], Z[..., 1] / zs - v_n / f[:, None]], axis=-1)
    return Z, zs, front, r


def _cost(r: np.ndarray, front: np.ndarray, wr: np.ndarray) -> np.ndarray:
    """(B,) weighted squared reprojection error (points behind the camera count 0)."""
    return (wr * np.where(front, (r**2).sum(-1), 0.0)).sum(-1)


def _huber_weights(r: np.ndarray, w: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Sample weights ``w`` times Huber weights at 2.5× the median residual (no effect on exact data)."""
    B, n, _ = r.shape
    e = np.sqrt((r**2).sum(-1))
    with np.errstate(all="ignore"):
        med = np.nanmedian(np.where(w > 0, e, np.nan), axis=1) if n else np.ones(B)
    med = np.where(np.isfinite(med), med, 1.0)
    k = 2.5 * np.maximum(med, 1e-12)[:, None]
    hub = np.where(e <= k, 1.0, k / np.maximum(e, 1e-300))
    return w * hub * front


def _reprojection_jacobian(Z: np.ndarray, zs: np.ndarray, R: np.ndarray, xh: np.ndarray, yh: np.ndarray,
                           estimate_focal: bool) -> np.ndarray:
    """(B, n, 2, 6|7) Jacobian of the residuals w.r.t. (ω, c[, log f]), ``R ← R exp(ω)``.

    ``dr/dZ = [[1/z, 0, −x/z], [0, 1/z, −y/z]]`` (x, y = Z_x/z, Z_y/z); ``dZ/dω = [Z]×``,
    ``dZ/dc = −Rᵀ``; ``dr/d log f = (x̂, ŷ)``.
    """
    B, n, _ = Z.shape
    inv = 1.0 / zs
    xz, yz = Z[..., 0] * inv, Z[..., 1] * inv
    dZ = np.zeros((B, n, 2, 3))
    dZ[..., 0, 0] = inv
    dZ[..., 0, 2] = -xz * inv
    dZ[..., 1, 1] = inv
    dZ[..., 1, 2] = -yz * inv
    J = np.zeros((B, n, 2, 7 if estimate_focal else 6))
    # (dr/dZ)[Z]×, written out: [Z]× rows are (0,−Z2,Z1), (Z2,0,−Z0), (−Z1,Z0,0).
    Z0, Z1, Z2 = Z[..., 0], Z[..., 1], Z[..., 2]
    J[..., 0, 0] = xz * inv * Z1
    J[..., 0, 1] = -inv * Z2 - xz * inv * Z0
    J[..., 0, 2] = inv * Z1
    J[..., 1, 0] = inv * Z2 + yz * inv * Z1
    J[..., 1, 1] = -yz * inv * Z0
    J[..., 1, 2] = -inv * Z0
    J[..., 3:6] = -np.matmul(dZ, np.swapaxes(R, -1, -2)[:, None])
    if estimate_focal:
        J[..., 0, 6] = xh
        J[..., 1, 6] = yh
    return J


def _lm_attempts(P, R, c, f, u_n, v_n, J, r, wr, c0, damp, active, estimate_focal):
    """One LM iteration per active camera: up to 6 damped steps until the cost does not increase.

    Returns ``(R, c, f, damp, pending, moved, gain)``: ``pending`` (B,) cameras that found no
    better step, ``moved`` the accepted step's max component, ``gain`` its cost decrease.
    """
    B, n, _, npar = J.shape
    Jf = J.reshape(B, 2 * n, npar)
    wf = np.repeat(wr, 2, axis=1)
    JtJ = np.matmul(np.swapaxes(Jf * wf[..., None], 1, 2), Jf)
    Jtr = np.matmul(np.swapaxes(Jf * wf[..., None], 1, 2), r.reshape(B, 2 * n, 1))[..., 0]
    pending = active.copy()
    moved, gain = np.zeros(B), np.zeros(B)
    for _attempt in range(6):
        A = JtJ + damp[:, None, None] * (np.eye(npar) * np.maximum(np.einsum("bii->bi", JtJ), 1e-12)[:, None, :])
        A[~pending] = np.eye(npar)
        delta = -np.linalg.solve(A, Jtr[..., None])[..., 0]
        delta[~pending] = 0.0
        Rn = R @ so3_exp(delta[:, 0:3])
        cn = c + delta[:, 3:6]
        fn = f * np.exp(delta[:, 6]) if estimate_focal else f
        _, _, frontn, rn = _reprojection(P, Rn, cn, fn, u_n, v_n)
        c1 = _cost(rn, frontn, wr)
        better = pending & (c1 <= c0)
        R = np.where(better[:, None, None], Rn, R)
        c = np.where(better[:, None], cn, c)
        f = np.where(better, fn, f)
        moved = np.where(better, np.abs(delta).max(-1), moved)
        gain = np.where(better, c0 - c1, gain)
        damp = np.where(better, np.maximum(damp * 0.3, 1e-9), np.where(pending, damp * 10.0, damp))
        pending &= ~better
        if not pending.any():
            break
    return R, c, f, damp, pending, moved, gain
